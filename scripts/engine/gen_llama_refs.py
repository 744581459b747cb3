#!/usr/bin/env python3
"""Regenerates engine/tests/data/llama_refs.json: greedy 32-token continuations and the top-5
next-token logits from llama.cpp (through llama-cpp-python) for a fixed set of prompts.

Usage: scripts/engine/gen_llama_refs.py MODEL.gguf [OUT.json]
llama-cpp-python must be importable: scripts/engine/install_llama_cpp.sh prints the directory to
put on PYTHONPATH. Flash attention is off (llama.cpp's plain attention path), one sequence,
n_ctx 512, 2 threads; BOS is added, special tokens are parsed only in the chat-template prompts.
"""
import json
import sys

import llama_cpp
import numpy as np

PROMPTS = [
    ("The capital of France is", False),
    ("Once upon a time, in a small village by the sea,", False),
    ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("The three primary colors are", False),
    ("Water boils at a temperature of", False),
    ("List of the planets in the solar system:\n1.", False),
    ("La tour Eiffel est située à", False),
    ("Question: What is 12 times 12?\nAnswer:", False),
    ("The quick brown fox", False),
    ("In machine learning, a transformer is", False),
    ("<start_of_turn>user\nWrite a haiku about the ocean.<end_of_turn>\n<start_of_turn>model\n", True),
    ("<start_of_turn>user\nWhat is the largest mammal?<end_of_turn>\n<start_of_turn>model\n", True),
]
N_TOKENS = 32


def main():
    model = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "engine/tests/data/llama_refs.json"
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=2, logits_all=True,
                          flash_attn=False, verbose=False, seed=0)
    cases = []
    for text, special in PROMPTS:
        llm.reset()
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        llm.eval(toks)
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top = np.argsort(-logits, kind="stable")[:5]
        first_top5 = [[int(t), float(logits[t])] for t in top]
        gen = []
        for _ in range(N_TOKENS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            t = int(np.argmax(logits))
            gen.append(t)
            llm.eval([t])
        cases.append({
            "prompt": text,
            "parse_special": special,
            "prompt_tokens": [int(t) for t in toks],
            "tokens": gen,
            "top5": first_top5,
            "text": llm.detokenize(gen).decode("utf-8", errors="replace"),
        })
        print(repr(text), "->", repr(cases[-1]["text"]), file=sys.stderr)
    doc = {
        "generator": "scripts/engine/gen_llama_refs.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "vendored by llama-cpp-python " + llama_cpp.__version__ + " (built from its PyPI sdist, GGML_NATIVE=ON, CPU)",
        "settings": {"n_ctx": 512, "threads": 2, "flash_attn": False, "logits_all": True, "greedy": True, "add_bos": True},
        "model_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
