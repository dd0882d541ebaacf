"""Prefill and decode speed of llama.cpp (via llama-cpp-python) on a GGUF.

Mirrors examples/candle_bench.rs: the same prompt text cut to --prompt-tokens, then greedy decode
of --gen-tokens with EOS ignored, on --threads threads. Prints the same line format.
"""
import argparse
import statistics
import time

import numpy as np
from llama_cpp import Llama

TEXT = "The quick brown fox jumps over the lazy dog while 12 programmers write Rust code. "


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=4)
    a = p.parse_args()

    t = time.perf_counter()
    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=1024, n_batch=512, verbose=False)
    load = time.perf_counter() - t
    ids = llm.tokenize((TEXT * (a.prompt_tokens // 8 + 1)).encode(), add_bos=False)[: a.prompt_tokens]
    print(f"model={a.model} engine=llama.cpp threads={a.threads} load={load:.2f}s")
    pre, dec = [], []
    for i in range(a.runs):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(a.gen_tokens):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        decode = time.perf_counter() - t
        pre.append(len(ids) / prefill)
        dec.append(a.gen_tokens / decode)
        print(f"round {i}: prefill {len(ids)} tok in {prefill:.3f}s = {pre[-1]:.1f} tok/s; "
              f"decode {a.gen_tokens} tok in {decode:.3f}s = {dec[-1]:.1f} tok/s")
    rest_p, rest_d = (pre[1:], dec[1:]) if len(pre) > 1 else (pre, dec)
    print(f"median: prefill {statistics.median(rest_p):.1f} tok/s, decode {statistics.median(rest_d):.1f} tok/s")


if __name__ == "__main__":
    main()
