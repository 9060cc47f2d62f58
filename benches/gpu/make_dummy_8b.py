#!/usr/bin/env python3
"""Writes a model directory shaped like Llama 3 8B (32 layers, hidden 4096, GQA 32/8, vocab
128256) with random bf16 weights (~16 GB), for throughput runs on a GPU machine that cannot
download weights. The config keys besides the shape, and the tokenizer, come from the tiny
dummy `lantern dummy-model` writes, so Lantern and transformers read the same directory.

    make_dummy_8b.py --lantern ./lantern --out /tmp/llama-8b            # 8B shape
    make_dummy_8b.py --lantern ./lantern --out /tmp/llama-dry --shape dry-run   # CPU dry run
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256),
    # The same code path in seconds on a CPU: 8B's vocabulary and head layout, two small layers.
    "dry-run": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=128, vocab_size=128256),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lantern", required=True, help="the lantern binary (writes the tiny dummy)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.out / "config.json").exists():
        print(f"{args.out} exists: kept")
        return
    started = time.time()
    with tempfile.TemporaryDirectory() as tiny:
        subprocess.run([args.lantern, "dummy-model", "--arch", "llama", "--out", tiny],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        keys = json.loads((pathlib.Path(tiny) / "config.json").read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            shutil.copy(pathlib.Path(tiny) / name, args.out / name)
    keys.update(SHAPES[args.shape])
    keys.update(torch_dtype="bfloat16", rope_theta=500000.0, rope_scaling=None,
                max_position_embeddings=8192)
    for unused in ("architectures", "model_type", "use_sliding_window", "max_window_layers",
                   "sliding_window"):
        keys.pop(unused, None)
    config = LlamaConfig(**keys)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Built directly in bf16 on the GPU: 16 GB, not 32 GB of f32 first.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="4GB")
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({args.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
          f"parameters, {size / 2**30:.1f} GiB) in {time.time() - started:.0f} s on {device}")


if __name__ == "__main__":
    main()
