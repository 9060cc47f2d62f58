"""Offline checks of the deployment files (run by .ci/run): every request the SageMaker
scripts and the ECS definitions would send is validated against botocore's own service
models; the stream parser is checked on a payload split mid-line.

    python docker/validate.py
"""

import json
import os
import sys

import botocore.session
from botocore.validate import ParamValidator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "sagemaker"))

import deploy  # noqa: E402
import invoke  # noqa: E402
import lambda_handler  # noqa: E402


def check(service, operation, params):
    """Validates a request against botocore's model of its operation, enums included (which
    botocore's own validator leaves to the service)."""
    model = botocore.session.get_session().get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    if report.has_errors():
        raise SystemExit(f"{service}.{operation}: {report.generate_report()}")
    errors = enum_errors(model.input_shape, params, operation)
    if errors:
        raise SystemExit(f"{service}.{operation}: " + "; ".join(errors))
    print(f"ok {service}.{operation}")


def enum_errors(shape, value, path):
    """Every string in `value` whose shape is an enum and that the enum lacks."""
    if shape.type_name == "structure":
        return [e for name, v in value.items() for e in enum_errors(shape.members[name], v, f"{path}.{name}")]
    if shape.type_name == "list":
        return [e for i, v in enumerate(value) for e in enum_errors(shape.member, v, f"{path}[{i}]")]
    if shape.type_name == "map":
        return [e for k, v in value.items() for e in enum_errors(shape.value, v, f"{path}[{k}]")]
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        return [f"{path}: {value!r} is not one of {sorted(shape.enum)}"]
    return []


def load(*parts):
    with open(os.path.join(HERE, *parts)) as f:
        return json.load(f)


def main():
    for source in (["--hf-model-id", "HuggingFaceTB/SmolLM2-135M-Instruct"], ["--model-data", "s3://bucket/model.tar.gz"]):
        args = deploy.parse_args(["--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/lantern:0.1.0",
                                  "--role", "arn:aws:iam::123456789012:role/SageMakerRole", *source])
        for call in deploy.requests(args):
            check(*call)
        config = dict((op, params) for _, op, params in deploy.requests(args))["CreateEndpointConfig"]
        assert config["ProductionVariants"][0]["InferenceAmiVersion"] == deploy.DEFAULT_GPU_AMI
    # Every AMI deploy.py offers is one the API knows, with a driver that runs CUDA 12.4
    # (natively from 550, through the image's cuda-compat libraries below).
    sagemaker = botocore.session.get_session().get_service_model("sagemaker")
    known = set(sagemaker.shape_for("ProductionVariantInferenceAmiVersion").enum)
    assert set(deploy.GPU_AMIS) <= known, set(deploy.GPU_AMIS) - known
    assert deploy.GPU_AMIS[deploy.DEFAULT_GPU_AMI] >= 550
    # CPU instances get no GPU AMI.
    args = deploy.parse_args(["--image", "i", "--role", "arn:aws:iam::123456789012:role/R",
                              "--hf-model-id", "m", "--instance-type", "ml.c7i.4xlarge"])
    calls = deploy.requests(args)
    for call in calls:
        check(*call)
    config = dict((op, params) for _, op, params in calls)["CreateEndpointConfig"]
    assert "InferenceAmiVersion" not in config["ProductionVariants"][0]
    print("ok InferenceAmiVersion on GPU instances only")
    # Inference components on a 4-GPU instance: a copy per GPU, scaled to zero and back.
    args = deploy.parse_args(["--image", "i", "--role", "arn:aws:iam::123456789012:role/R",
                              "--hf-model-id", "m", "--inference-components",
                              "--instance-type", "ml.g5.12xlarge", "--gpus", "4"])
    calls = deploy.requests(args)
    for call in calls:
        check(*call)
    by_operation = {}
    for _, op, params in calls:
        by_operation.setdefault(op, []).append(params)
    component = by_operation["CreateInferenceComponent"][0]
    assert component["RuntimeConfig"]["CopyCount"] == 4
    assert component["Specification"]["ComputeResourceRequirements"]["NumberOfAcceleratorDevicesRequired"] == 1
    variant = by_operation["CreateEndpointConfig"][0]["ProductionVariants"][0]
    assert "ModelName" not in variant and variant["ManagedInstanceScaling"]["MinInstanceCount"] == 0
    assert variant["RoutingConfig"]["RoutingStrategy"] == "LEAST_OUTSTANDING_REQUESTS"
    assert by_operation["RegisterScalableTarget"][0]["MinCapacity"] == 0
    tracking, step = by_operation["PutScalingPolicy"]
    assert (tracking["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]["PredefinedMetricType"]
            == "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution")
    alarm = by_operation["PutMetricAlarm"][0]
    assert step["PolicyType"] == "StepScaling" and alarm["AlarmActions"] == [deploy.STEP_POLICY_ARN]
    assert alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": component["InferenceComponentName"]}]
    print("ok inference components: a copy per GPU, scale to zero and back")
    # LoRA adapters as inference components on the base component, invoked by name.
    args = deploy.parse_args(["--image", "i", "--role", "arn:aws:iam::123456789012:role/R",
                              "--hf-model-id", "m", "--inference-components",
                              "--adapter", "tone=s3://bucket/adapters/tone.tar.gz",
                              "--adapter", "sql=s3://bucket/adapters/sql.tar.gz"])
    calls = deploy.requests(args)
    for call in calls:
        check(*call)
    components = [params for _, op, params in calls if op == "CreateInferenceComponent"]
    base, *adapters = components
    assert [a["Specification"]["BaseInferenceComponentName"] for a in adapters] == [base["InferenceComponentName"]] * 2
    assert adapters[0]["Specification"]["Container"]["ArtifactUrl"] == "s3://bucket/adapters/tone.tar.gz"
    assert "ComputeResourceRequirements" not in adapters[0]["Specification"]
    for body in invoke.BODIES.values():
        check("sagemaker-runtime", "InvokeEndpoint",
              invoke.invoke_params("lantern", body, component=adapters[0]["InferenceComponentName"]))
    print("ok adapter inference components on the base, invoked by InferenceComponentName")
    # The enum check bites: a value the API does not know is refused.
    try:
        check("application-autoscaling", "PutScalingPolicy", {
            **tracking, "TargetTrackingScalingPolicyConfiguration": {
                **tracking["TargetTrackingScalingPolicyConfiguration"],
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerConcurrentRequestsPerCopy"}}})
    except SystemExit as refused:
        assert "PredefinedMetricType" in str(refused), refused
        print("ok an unknown enum value is refused")
    else:
        raise SystemExit("an unknown PredefinedMetricType passed")
    for body in invoke.BODIES.values():
        check("sagemaker-runtime", "InvokeEndpoint", invoke.invoke_params("lantern", body))
    check("sagemaker-runtime", "InvokeEndpointWithResponseStream", invoke.invoke_params("lantern", invoke.BODIES["tgi"], stream=True))
    lambda_request = lambda_handler.build_request({"body": json.dumps({"prompt": "hi"})}, "lantern")
    check("sagemaker-runtime", "InvokeEndpoint", lambda_request)
    assert lambda_handler.build_request({"body": "{}"}, "lantern") is None
    check("ecs", "RegisterTaskDefinition", load("ecs", "task-definition.json"))
    check("ecs", "CreateService", load("ecs", "service.json"))
    check("elbv2", "CreateTargetGroup", load("ecs", "target-group.json"))
    # A stream split at arbitrary byte boundaries still yields the text.
    sse = (b'data: {"index":1,"token":{"id":5,"text":"Hel","special":false}}\n\n'
           b'data: {"index":2,"token":{"id":6,"text":"lo","special":false}}\n\n'
           b'data: {"index":3,"token":{"id":2,"text":"","special":true},"generated_text":"Hello"}\n\n')
    parts = [sse[i:i + 7] for i in range(0, len(sse), 7)]
    assert invoke.text_from_stream(parts) == "Hello", invoke.text_from_stream(parts)
    print("ok stream parsing")
    with open(os.path.join(HERE, "grafana", "lantern.json")) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all("lantern_" in e for e in exprs)
    print("ok grafana dashboard")


if __name__ == "__main__":
    main()
