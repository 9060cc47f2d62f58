"""Sentencepiece tokenizers in GGUF files (`tokenizer.ggml.model = llama`) and the token ids
transformers gives for them, for `models/tests/gguf_sentencepiece.rs`.

Made once, on a machine with `pip install transformers sentencepiece gguf torch` (never in CI):

    python models/tests/goldens/make_spm_goldens.py

Trains a small BPE sentencepiece model with byte fallback on the dummy models' corpus, writes
it into three GGUF files the way llama.cpp's converter does (one per tokenizer flavour
transformers builds from such files: `llama`, `gemma2`, `phi3`; the Gemma file spells
whitespace-only tokens with spaces, as llama.cpp's Gemma files do) with no tensors, and
records transformers' ids (without and with the special tokens it adds: BOS, as
`tokenizer.ggml.add_bos_token` says) and decoded text for varied samples in
`spm_tokenizers.json`.
"""

import json
import os
import tempfile

import gguf
import sentencepiece as spm
from make_goldens import TOKENIZER_SAMPLES
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "src", "dummy", "corpus.txt")
OUT = os.path.join(HERE, "spm")

# make_goldens' samples, and tokens a sentencepiece vocabulary treats apart.
SAMPLES = TOKENIZER_SAMPLES + [
    "<think>user-defined</think> stays whole, <s> is control",
    " x",
]

# llama.cpp's token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def train(workdir):
    prefix = os.path.join(workdir, "spm")
    spm.SentencePieceTrainer.train(
        input=CORPUS, model_prefix=prefix, vocab_size=700, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<think>", "</think>"],
        character_coverage=1.0, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def vocabulary(sp):
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_byte(i):
            types.append(BYTE)
        elif tokens[-1] in ("<think>", "</think>"):
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    return tokens, scores, types


def write(path, arch, tokens, scores, types, sp):
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    goldens = []
    with tempfile.TemporaryDirectory() as workdir:
        sp = train(workdir)
        tokens, scores, types = vocabulary(sp)
        for arch in ["llama", "gemma2", "phi3"]:
            spelled = tokens
            if arch == "gemma2":
                spelled = [t.replace("\u2581", " ") if set(t) == {"\u2581"} and len(t) > 1 else t for t in tokens]
            name = f"{arch}.gguf"
            write(os.path.join(OUT, name), arch, spelled, scores, types, sp)
            tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file=name)
            for text in SAMPLES:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                with_special = tokenizer(text)["input_ids"]
                goldens.append({"file": name, "text": text, "ids": ids, "with_special_tokens": with_special,
                                "decoded": tokenizer.decode(ids)})
            print("wrote", name)
    with open(os.path.join(HERE, "spm_tokenizers.json"), "w") as f:
        json.dump(goldens, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote spm_tokenizers.json")


if __name__ == "__main__":
    main()
