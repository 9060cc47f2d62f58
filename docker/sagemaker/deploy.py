"""Deploy Lantern to a SageMaker real-time endpoint: model, endpoint configuration, endpoint
and target-tracking autoscaling on invocations per instance.

    python docker/sagemaker/deploy.py --image ECR_IMAGE --role ROLE_ARN --name lantern \
        (--hf-model-id HuggingFaceTB/SmolLM2-135M-Instruct | --model-data s3://bucket/model.tar.gz)

`--dry-run` builds every request and validates it against botocore's own service models
without credentials or network (what CI runs).
"""

import argparse
import json
import sys

import botocore.session
from botocore.validate import ParamValidator


def requests(args):
    """The (service, operation, params) calls a deployment makes, in order."""
    environment = {"LOG_FORMAT": "json", "SM_NUM_GPUS": str(args.gpus)}
    container = {"Image": args.image, "Environment": environment}
    if args.model_data:
        container["ModelDataUrl"] = args.model_data  # unpacked into /opt/ml/model
    else:
        environment["HF_MODEL_ID"] = args.hf_model_id
    variant = "AllTraffic"
    production_variant = {
        "VariantName": variant,
        "ModelName": args.name,
        "InstanceType": args.instance_type,
        "InitialInstanceCount": args.instances,
        # Large models take long to download and load: room for both.
        "ModelDataDownloadTimeoutInSeconds": 3600,
        "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
    }
    if is_gpu_instance(args.instance_type) and args.inference_ami_version:
        # The GPU image is built with CUDA 12.4: an AMI whose driver runs it (SageMaker's
        # default driver on some instance families is older).
        production_variant["InferenceAmiVersion"] = args.inference_ami_version
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
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--inference-ami-version", default=DEFAULT_GPU_AMI, choices=sorted(GPU_AMIS),
                   help="GPU instances only: the AMI (and so the NVIDIA driver) the endpoint runs on")
    p.add_argument("--invocations-per-instance", type=int, default=100)
    p.add_argument("--region")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    calls = requests(args)
    validate(calls)
    if args.dry_run:
        for service, operation, params in calls:
            print(json.dumps({"service": service, "operation": operation, "params": params}))
        return
    import boto3

    clients = {}
    for service, operation, params in calls:
        client = clients.setdefault(service, boto3.client(service, region_name=args.region))
        getattr(client, botocore.xform_name(operation))(**params)
        if operation == "CreateEndpoint":
            print("waiting for the endpoint to be in service...", file=sys.stderr)
            client.get_waiter("endpoint_in_service").wait(EndpointName=args.name)


if __name__ == "__main__":
    main()
