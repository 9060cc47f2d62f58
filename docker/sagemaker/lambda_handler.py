"""The Lambda + API Gateway pattern: API Gateway passes `{"prompt": ...}`; the handler forwards
it to the endpoint named in ENDPOINT_NAME as a TGI body and returns the generated text."""

import json
import os


def build_request(event, endpoint):
    body = json.loads(event.get("body") or "{}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return None
    payload = {"inputs": prompt, "parameters": {"max_new_tokens": int(body.get("max_new_tokens", 256))}}
    return {"EndpointName": endpoint, "ContentType": "application/json", "Body": json.dumps(payload)}


def handler(event, context):
    import boto3

    request = build_request(event, os.environ["ENDPOINT_NAME"])
    if request is None:
        return {"statusCode": 400, "body": json.dumps({"error": "`prompt` (a non-empty string) is required"})}
    response = boto3.client("sagemaker-runtime").invoke_endpoint(**request)
    generated = json.loads(response["Body"].read())[0]["generated_text"]
    return {"statusCode": 200, "body": json.dumps({"generated_text": generated})}
