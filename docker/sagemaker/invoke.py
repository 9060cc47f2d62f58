"""Calling a Lantern endpoint the ways clients already do: the TGI, OpenAI and Bedrock bodies
with `invoke_endpoint`, and a stream with `invoke_endpoint_with_response_stream`, whose
payload parts are reassembled into SSE lines and then text. `--component NAME` calls one
inference component (a LoRA adapter's, made by `deploy.py --adapter`): SageMaker sends it to
the base's containers with the adapter named in `X-Amzn-SageMaker-Adapter-Identifier`.

    python docker/sagemaker/invoke.py ENDPOINT_NAME [--component INFERENCE_COMPONENT_NAME]
"""

import json
import sys

BODIES = {
    "tgi": {"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 100}},
    "openai": {"model": "lantern", "messages": [{"role": "user", "content": "What is machine learning?"}], "max_tokens": 100},
    "bedrock": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                "messages": [{"role": "user", "content": "What is machine learning?"}]},
}


def invoke_params(endpoint, body, stream=False, component=None):
    if stream:
        body = dict(body, stream=True)
    params = {"EndpointName": endpoint, "ContentType": "application/json", "Body": json.dumps(body)}
    if component:
        params["InferenceComponentName"] = component
    return params


def text_from_stream(payload_parts):
    """SSE bytes arrive split at arbitrary points: buffer to whole lines, parse `data:` lines."""
    buffer, text = b"", []
    for part in payload_parts:
        buffer += part
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            event = json.loads(data)
            token = event.get("token") or {}
            if not token.get("special"):
                text.append(token.get("text", ""))
    return "".join(text)


def main(endpoint, component=None):
    import boto3

    runtime = boto3.client("sagemaker-runtime")
    for name, body in BODIES.items():
        response = runtime.invoke_endpoint(**invoke_params(endpoint, body, component=component))
        print(name, json.loads(response["Body"].read()))
    stream = runtime.invoke_endpoint_with_response_stream(
        **invoke_params(endpoint, BODIES["tgi"], stream=True, component=component))
    parts = (event["PayloadPart"]["Bytes"] for event in stream["Body"] if "PayloadPart" in event)
    print("stream", text_from_stream(parts))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    target = None
    if "--component" in arguments:
        at = arguments.index("--component")
        target = arguments[at + 1]
        del arguments[at:at + 2]
    main(arguments[0], target)
