"""Deploy Lantern to a SageMaker real-time endpoint: model, endpoint configuration, endpoint
and autoscaling. Two shapes:

- classic (the default): the model on every instance, target tracking on invocations per
  instance. On a multi-GPU instance Lantern runs one engine per GPU (`SM_NUM_GPUS`).
- `--inference-components`: the model as an inference component, one copy per GPU (each copy
  one GPU, so one engine), copies tracked on concurrent requests per copy (SageMaker's
  high-resolution metric), scaled to zero copies and zero instances when idle, and back up
  from zero by a step-scaling policy that a CloudWatch alarm on `NoCapacityInvocationFailures`
  (requests that found no copy) triggers. Requests go to the copy with the fewest outstanding.
  `--adapter NAME=s3://...` (repeatable) adds a LoRA adapter inference component on that base
  component for each: SageMaker places its artifact beside the base's copies and registers it
  with Lantern (`POST /adapters`); `invoke.py --component ENDPOINT-NAME` calls one.

    python docker/sagemaker/deploy.py --image ECR_IMAGE --role ROLE_ARN --name lantern \
        (--hf-model-id HuggingFaceTB/SmolLM2-135M-Instruct | --model-data s3://bucket/model.tar.gz) \
        [--inference-components --instance-type ml.g5.12xlarge --gpus 4 \
         [--adapter tone=s3://bucket/adapters/tone.tar.gz ...]]

`--dry-run` builds every request and validates it against botocore's own service models
without credentials or network (what CI runs).
"""

import argparse
import json
import sys

import botocore.session
from botocore.validate import ParamValidator


# Stands for the step-scaling policy's ARN in the alarm that triggers it: PutScalingPolicy
# returns it, and main() puts it in before PutMetricAlarm is sent.
STEP_POLICY_ARN = "arn:aws:autoscaling:region:account:scalingPolicy:step-policy-arn-from-put-scaling-policy"


def requests(args):
    """The (service, operation, params) calls a deployment makes, in order."""
    if args.inference_components:
        return inference_component_requests(args)
    # Lantern runs one engine per GPU it sees; --gpus limits it (SageMaker's SM_NUM_GPUS).
    container = model_container(args, {"SM_NUM_GPUS": str(args.gpus)} if args.gpus else {})
    variant = "AllTraffic"
    production_variant = {
        "VariantName": variant,
        "ModelName": args.name,
        "InstanceType": args.instance_type,
        "InitialInstanceCount": args.instances,
        # Large models take long to download and load: room for both.
        "ModelDataDownloadTimeoutInSeconds": 3600,
        "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
        "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
    }
    set_ami(args, production_variant)
    resource_id = f"endpoint/{args.name}/variant/{variant}"
    return [
        ("sagemaker", "CreateModel", {"ModelName": args.name, "ExecutionRoleArn": args.role, "PrimaryContainer": container}),
        ("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": args.name,
            "ProductionVariants": [production_variant],
        }),
        ("sagemaker", "CreateEndpoint", {"EndpointName": args.name, "EndpointConfigName": args.name}),
        ("application-autoscaling", "RegisterScalableTarget", {
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": args.instances,
            "MaxCapacity": args.max_instances,
        }),
        ("application-autoscaling", "PutScalingPolicy", {
            "PolicyName": f"{args.name}-invocations",
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(args.invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        }),
    ]


def inference_component_requests(args):
    """The model as an inference component: copies of one GPU each, as many as the instance
    has GPUs; instances managed by SageMaker (down to zero); copies scaled on concurrent
    requests per copy, to zero when idle and back from zero on the first refused request."""
    # One GPU per copy: one engine per copy, whatever the platform says of the instance.
    container = model_container(args, {"SM_NUM_GPUS": "1", "LANTERN_DATA_PARALLEL": "1"})
    variant = "AllTraffic"
    production_variant = {
        "VariantName": variant,
        "InstanceType": args.instance_type,
        "InitialInstanceCount": args.instances,
        # SageMaker adds and removes instances as copies need them, down to none.
        "ManagedInstanceScaling": {
            "Status": "ENABLED",
            "MinInstanceCount": 0 if args.min_copies == 0 else 1,
            "MaxInstanceCount": args.max_instances,
        },
        "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
    }
    set_ami(args, production_variant)
    component = f"{args.name}-model"
    resource_id = f"inference-component/{component}"
    dimension = "sagemaker:inference-component:DesiredCopyCount"
    copies = args.copies or args.gpus or 1
    return base_component_requests(args, container, production_variant, component, copies) + [
        adapter_component_request(args, component, adapter) for adapter in args.adapter
    ] + scaling_requests(args, component, resource_id, dimension, copies)


def adapter_component_request(args, base_component, adapter):
    """A LoRA adapter as an inference component on the base component: no resources of its
    own, its artifact (a PEFT directory, tarred) placed by SageMaker and registered with the
    base's containers; invoked by its own InferenceComponentName."""
    name, url = adapter
    return ("sagemaker", "CreateInferenceComponent", {
        "InferenceComponentName": adapter_component_name(args.name, name),
        "EndpointName": args.name,
        "Specification": {
            "BaseInferenceComponentName": base_component,
            "Container": {"ArtifactUrl": url},
        },
    })


def adapter_component_name(endpoint, adapter):
    return f"{endpoint}-{adapter}"


def base_component_requests(args, container, production_variant, component, copies):
    variant = production_variant["VariantName"]
    return [
        ("sagemaker", "CreateModel", {"ModelName": args.name, "ExecutionRoleArn": args.role, "PrimaryContainer": container}),
        ("sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": args.name,
            # Endpoints of inference components name their role here, not in a model.
            "ExecutionRoleArn": args.role,
            "ProductionVariants": [production_variant],
        }),
        ("sagemaker", "CreateEndpoint", {"EndpointName": args.name, "EndpointConfigName": args.name}),
        ("sagemaker", "CreateInferenceComponent", {
            "InferenceComponentName": component,
            "EndpointName": args.name,
            "VariantName": variant,
            "Specification": {
                "ModelName": args.name,
                "StartupParameters": {
                    "ModelDataDownloadTimeoutInSeconds": 3600,
                    "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
                },
                "ComputeResourceRequirements": {
                    "NumberOfAcceleratorDevicesRequired": 1.0,
                    "MinMemoryRequiredInMb": args.memory_per_copy_mb,
                },
            },
            "RuntimeConfig": {"CopyCount": copies},
        }),
    ]


def scaling_requests(args, component, resource_id, dimension, copies):
    """Copies tracked on concurrent requests per copy; from zero on the first refused one."""
    return [
        ("application-autoscaling", "RegisterScalableTarget", {
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id,
            "ScalableDimension": dimension,
            "MinCapacity": args.min_copies,
            "MaxCapacity": args.max_copies or copies * args.max_instances,
        }),
        ("application-autoscaling", "PutScalingPolicy", {
            "PolicyName": f"{args.name}-concurrent-requests",
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id,
            "ScalableDimension": dimension,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(args.concurrent_requests_per_copy),
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution",
                },
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        }),
        # Target tracking cannot scale out from zero copies (there is nothing to measure):
        # one copy is added whenever the alarm below fires.
        ("application-autoscaling", "PutScalingPolicy", {
            "PolicyName": f"{args.name}-scale-from-zero",
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id,
            "ScalableDimension": dimension,
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Maximum",
                "Cooldown": 60,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            },
        }),
        # Requests that found no copy to serve them: the signal to start one.
        ("cloudwatch", "PutMetricAlarm", {
            "AlarmName": f"{args.name}-no-capacity",
            "AlarmDescription": "Requests found no copy of the model: scale up from zero",
            "Namespace": "AWS/SageMaker",
            "MetricName": "NoCapacityInvocationFailures",
            "Dimensions": [{"Name": "InferenceComponentName", "Value": component}],
            "Statistic": "Sum",
            "Period": 60,
            "EvaluationPeriods": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
            "AlarmActions": [STEP_POLICY_ARN],
        }),
    ]


def model_container(args, environment):
    """The model's container: the image, its settings, and where the weights come from."""
    container = {"Image": args.image, "Environment": {"LOG_FORMAT": "json", **environment}}
    if args.model_data:
        container["ModelDataUrl"] = args.model_data  # unpacked into /opt/ml/model
    else:
        container["Environment"]["HF_MODEL_ID"] = args.hf_model_id
    return container


def set_ami(args, production_variant):
    if is_gpu_instance(args.instance_type) and args.inference_ami_version:
        # The GPU image is built with CUDA 12.4: an AMI whose driver runs it (SageMaker's
        # default driver on some instance families is older).
        production_variant["InferenceAmiVersion"] = args.inference_ami_version


# SageMaker's inference AMIs and their NVIDIA drivers (botocore's model of the API lists
# them). The GPU image's CUDA 12.4 needs driver 550: gpu-3-1 (550) or gpu-4-1 (580). On the
# 535 AMIs the image runs through its CUDA forward-compatibility libraries.
GPU_AMIS = {
    "al2-ami-sagemaker-inference-gpu-2": 535,
    "al2-ami-sagemaker-inference-gpu-2-1": 535,
    "al2-ami-sagemaker-inference-gpu-3-1": 550,
    "al2023-ami-sagemaker-inference-gpu-4-1": 580,
}
DEFAULT_GPU_AMI = "al2-ami-sagemaker-inference-gpu-3-1"


def is_gpu_instance(instance_type):
    """ml.g5.xlarge, ml.p4d.24xlarge, ml.p5.48xlarge... (ml.c*, ml.m*, ml.r* are CPU)."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return family[:1] in ("g", "p")


def validate(calls):
    """Raises if any request does not match botocore's model of its operation."""
    session = botocore.session.get_session()
    validator = ParamValidator()
    for service, operation, params in calls:
        model = session.get_service_model(service).operation_model(operation)
        report = validator.validate(params, model.input_shape)
        if report.has_errors():
            raise SystemExit(f"{service}.{operation}: {report.generate_report()}")


def adapter_arg(text):
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith("s3://"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=s3://bucket/key")
    return name, url


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--name", default="lantern")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-model-id")
    source.add_argument("--model-data", help="s3://.../model.tar.gz")
    p.add_argument("--instance-type", default="ml.g5.xlarge")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--max-instances", type=int, default=4)
    p.add_argument("--gpus", type=int,
                   help="GPUs per instance (ml.g5.12xlarge: 4): classic endpoints use at most this many "
                        "(default: all the instance has); inference components make this many copies (default 1)")
    p.add_argument("--inference-ami-version", default=DEFAULT_GPU_AMI, choices=sorted(GPU_AMIS),
                   help="GPU instances only: the AMI (and so the NVIDIA driver) the endpoint runs on")
    p.add_argument("--invocations-per-instance", type=int, default=100)
    p.add_argument("--inference-components", action="store_true",
                   help="deploy as an inference component: one copy per GPU, scaled to zero when idle")
    p.add_argument("--copies", type=int, help="inference components: copies at start (default: --gpus)")
    p.add_argument("--min-copies", type=int, default=0, help="inference components: 0 scales to zero")
    p.add_argument("--max-copies", type=int, help="inference components: default --gpus x --max-instances")
    p.add_argument("--concurrent-requests-per-copy", type=int, default=8,
                   help="inference components: the concurrency each copy is scaled to hold")
    p.add_argument("--memory-per-copy-mb", type=int, default=8192,
                   help="inference components: host memory each copy reserves (copies x this must fit the "
                        "instance: ml.g5.xlarge has 16 GiB, ml.g5.12xlarge 192 GiB)")
    p.add_argument("--adapter", action="append", default=[], type=adapter_arg, metavar="NAME=S3_URL",
                   help="inference components: a LoRA adapter component on the base (repeatable)")
    p.add_argument("--region")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.adapter and not args.inference_components:
        raise SystemExit("--adapter needs --inference-components (adapters are inference components)")
    calls = requests(args)
    validate(calls)
    if args.dry_run:
        for service, operation, params in calls:
            print(json.dumps({"service": service, "operation": operation, "params": params}))
        return
    import boto3

    clients = {}
    step_policy_arn = None
    for service, operation, params in calls:
        client = clients.setdefault(service, boto3.client(service, region_name=args.region))
        if params.get("AlarmActions") == [STEP_POLICY_ARN]:
            params = {**params, "AlarmActions": [step_policy_arn]}
        response = getattr(client, botocore.xform_name(operation))(**params)
        if operation == "PutScalingPolicy" and params["PolicyType"] == "StepScaling":
            step_policy_arn = response["PolicyARN"]
        if operation == "CreateEndpoint":
            print("waiting for the endpoint to be in service...", file=sys.stderr)
            client.get_waiter("endpoint_in_service").wait(EndpointName=args.name)
        if operation == "CreateInferenceComponent":
            print("waiting for the inference component's copies...", file=sys.stderr)
            wait_for_component(client, params["InferenceComponentName"])


def wait_for_component(client, name, timeout_seconds=3600):
    """Waits until the component is in service (scaling it needs it to be)."""
    import time

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        status = client.describe_inference_component(InferenceComponentName=name)["InferenceComponentStatus"]
        if status == "InService":
            return
        if status == "Failed":
            raise SystemExit(f"inference component {name} failed: see its CloudWatch logs")
        time.sleep(30)
    raise SystemExit(f"inference component {name} not in service after {timeout_seconds} s")


if __name__ == "__main__":
    main()
