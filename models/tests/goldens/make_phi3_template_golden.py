"""transformers' rendering of Phi-3.5-mini's chat template, for `tokenizer_and_chat.rs`.

The template comes from llama.cpp's copy of it in the `llama-cpp-python==0.3.36` sdist on PyPI
(`vendor/llama.cpp/models/templates/microsoft-Phi-3.5-mini-instruct.jinja`), which the Rust
test fetches too. Made once, with transformers installed (never in CI):

    python models/tests/goldens/make_phi3_template_golden.py PATH/TO/microsoft-Phi-3.5-mini-instruct.jinja
"""

import json
import os
import sys

from make_goldens import CONVERSATIONS
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))

def main():
    source = open(sys.argv[1]).read()
    # Any tokenizer will do: the template only reads the messages and the special tokens.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        bos_token="<s>", eos_token="<|endoftext|>",
    )
    out = []
    for case, messages in CONVERSATIONS.items():
        for generation_prompt in [True, False]:
            text = tokenizer.apply_chat_template(
                messages, chat_template=source, tokenize=False, add_generation_prompt=generation_prompt
            )
            out.append({"case": case, "add_generation_prompt": generation_prompt, "messages": messages, "text": text})
    with open(os.path.join(HERE, "phi3_chat_template.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote phi3_chat_template.json")


if __name__ == "__main__":
    main()
