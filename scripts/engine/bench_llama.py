#!/usr/bin/env python3
"""llama.cpp side of `cargo xtask bench engine`: prefill of an N-token prompt and greedy decode
of M tokens, printed as one JSON object. The prompt is BENCH_TEXT tokenized (with BOS) and cut to
N tokens, exactly as `tvgen --bench-prompt N` builds it.

Usage: bench_llama.py MODEL THREADS N_PROMPT N_GEN [RUNS=2]   (llama_cpp importable, see install_llama_cpp.sh)
"""
import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

BENCH_TEXT = ("The history of computing is a story of people, machines and ideas. " * 64)


def main():
    model, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_prompt + n_gen + 8, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, flash_attn=False, verbose=False)
    toks = llm.tokenize(BENCH_TEXT.encode(), add_bos=True, special=False)[:n_prompt]
    n_vocab = llm.n_vocab()

    def last_logits():
        p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))

    best = None
    for _ in range(runs):  # the best of `runs` runs
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        t1 = time.perf_counter()
        nxt = int(np.argmax(last_logits()))
        dec = 0.0
        for _ in range(n_gen):
            ts = time.perf_counter()
            llm.eval([nxt])
            dec += time.perf_counter() - ts
            nxt = int(np.argmax(last_logits()))
        r = {"prefill_tok_s": len(toks) / (t1 - t0), "decode_tok_s": n_gen / dec}
        if best is None:
            best = r
        else:  # the best of each, as the engine side keeps
            best = {k: max(best[k], r[k]) for k in r}
    best["prompt_tokens"] = len(toks)
    best["llama_cpp_python"] = llama_cpp.__version__
    print(json.dumps(best))


if __name__ == "__main__":
    main()
