#!/usr/bin/env python3
"""The baseline beside Lantern's throughput: Hugging Face transformers `generate` on the same
model directory, device and workload (batch = concurrency, random prompts of the same length,
greedy, exactly --new-tokens new tokens). One JSON object per concurrency on stdout, as
`lantern selftest throughput` prints. transformers has no continuous batching: the batch is
static, which is what a user of plain transformers gets."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--concurrency", default="1,32,64")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def generate(batch, new_tokens):
        ids = torch.randint(3, 500, (batch, args.prompt_tokens), generator=generator)
        ids = ids.to(args.device)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=0)
        return out.shape[1] - ids.shape[1]

    generate(1, 4)  # warm-up: kernels loaded, allocator primed
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        sync()
        started = time.perf_counter()
        generated = generate(concurrency, args.new_tokens)
        sync()
        wall = time.perf_counter() - started
        print(json.dumps({
            "check": "hf_generate",
            "model": args.model.rstrip("/").split("/")[-1],
            "dtype": str(dtype).removeprefix("torch."),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
            "concurrency": concurrency,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": generated,
            "tokens_per_second": concurrency * generated / wall,
            "wall_seconds": wall,
        }), flush=True)


if __name__ == "__main__":
    main()
