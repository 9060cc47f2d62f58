"""Calling a Lantern endpoint the ways clients already do: the TGI, OpenAI and Bedrock bodies
with `invoke_endpoint`, and a stream with `invoke_endpoint_with_response_stream`, whose
payload parts are reassembled into SSE lines and then text.

    python docker/sagemaker/invoke.py ENDPOINT_NAME
"""

import json
import sys

BODIES = {
    "tgi": {"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 100}},
    "openai": {"model": "lantern", "messages": [{"role": "user", "content": "What is machine learning?"}], "max_tokens": 100},
    "bedrock": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                "messages": [{"role": "user", "content": "What is machine learning?"}]},
}


def invoke_params(endpoint, body, stream=False):
    if stream:
        body = dict(body, stream=True)
    return {"EndpointName": endpoint, "ContentType": "application/json", "Body": json.dumps(body)}


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


def main(endpoint):
    import boto3

    runtime = boto3.client("sagemaker-runtime")
    for name, body in BODIES.items():
        response = runtime.invoke_endpoint(**invoke_params(endpoint, body))
        print(name, json.loads(response["Body"].read()))
    stream = runtime.invoke_endpoint_with_response_stream(**invoke_params(endpoint, BODIES["tgi"], stream=True))
    parts = (event["PayloadPart"]["Bytes"] for event in stream["Body"] if "PayloadPart" in event)
    print("stream", text_from_stream(parts))


if __name__ == "__main__":
    main(sys.argv[1])
