"""Benchmark steering overhead and the ConTrans map fit.

Steering (METHODS.md §2 eq. 3) adds α·v to the residual stream after one block at every
position through a forward hook (`fedprivacy.concepts.steered`). Timed interleaved with its
anchor, the plain model (plain, steered, plain, steered, …), on a tiny model built from config
and on the real SmolLM2-135M-Instruct (its weights): one forward pass over a batch of prompts, and greedy
``generate`` of 16 tokens with the KV cache. Reports median and min–max over the repeats and
the overhead (steered median / plain median − 1). Also: fitting the least-squares map
(`fit_linear_map`, SVD, float64) on 2,000 state pairs of widths 576 → 640 (SmolLM2 → Gemma 3).

    python bench/bench_steering.py [--repeats 7] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import print_and_record  # noqa: E402

from fedprivacy import concepts  # noqa: E402
from fedprivacy.config import ModelConfig  # noqa: E402
from fedprivacy.data.tokenizer import build_tokenizer  # noqa: E402
from fedprivacy.models import (  # noqa: E402
    build_model,
    load_pretrained,
    load_tokenizer,
    smollm2_config,
)

PROMPTS = ["When I opened the letter from the bank, I", "The new restaurant on our street is",
           "Yesterday my colleague said that the meeting", "The weather this weekend will be"] * 4


def _stats(times: list[float]) -> str:
    return f"{1000 * statistics.median(times):.1f} ({1000 * min(times):.1f}–{1000 * max(times):.1f})"


def _hook_ms(shapes: list[tuple[int, ...]], hidden_size: int, repeats: int = 200) -> float:
    """Median ms of the steering hook's add on one tensor of each shape (one job's calls)."""
    add = concepts._delta_hook(torch.randn(hidden_size))
    tensors = [torch.randn(*shape) for shape in shapes]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for t in tensors:
            add(t)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_model(name: str, model, tok, repeats: int) -> list[str]:
    tok.padding_side = "left"  # decoder-only generate: pad on the left
    ids = tok(PROMPTS, return_tensors="pt", padding=True)
    layer = model.config.num_hidden_layers // 2
    vector = torch.randn(model.config.hidden_size) * 0.01
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    jobs = {"forward": lambda: model(**ids),
            "generate": lambda: model.generate(**ids, max_new_tokens=16, do_sample=False,
                                               pad_token_id=pad)}
    batch, length = ids["input_ids"].shape
    d = model.config.hidden_size
    calls = {"forward": [(batch, length, d)],
             "generate": [(batch, length, d)] + [(batch, 1, d)] * 15}  # KV cache: 1 new token
    rows = []
    for job, run in jobs.items():
        times = {"plain": [], "steered": []}
        with torch.no_grad():
            run()  # warm-up
            for i in range(repeats):
                for kind in (("plain", "steered") if i % 2 == 0 else ("steered", "plain")):
                    start = time.perf_counter()
                    if kind == "steered":
                        with concepts.steered(model, {layer: vector}):
                            run()
                    else:
                        run()
                    times[kind].append(time.perf_counter() - start)
        plain = statistics.median(times["plain"])
        overhead = statistics.median(times["steered"]) / plain - 1
        paired = [100 * (s / p - 1) for s, p in zip(times["steered"], times["plain"])]
        hook = _hook_ms(calls[job], d) / (1000 * plain)
        rows.append(f"| {name} | {job} | {_stats(times['plain'])} | {_stats(times['steered'])} "
                    f"| {100 * overhead:+.1f}% | {statistics.median(paired):+.1f}% "
                    f"({min(paired):+.1f}…{max(paired):+.1f}) | {100 * hook:.3f}% |")
    return rows


def bench_map(repeats: int) -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 576, generator=gen)
    y = x @ torch.randn(576, 640, generator=gen) + torch.randn(2000, 640, generator=gen)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        concepts.fit_linear_map(x, y)
        times.append(time.perf_counter() - start)
    return f"| fit_linear_map, 2,000 × 576 → 640 (float64 SVD) | {_stats(times)} ms |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiny_tok = build_tokenizer()
    tiny = build_model(ModelConfig(hidden_size=128, num_layers=4), tiny_tok, 0).eval()
    mc = smollm2_config()
    smol_tok = load_tokenizer(mc)
    smol = load_pretrained(mc).eval()
    if smol_tok.pad_token is None:
        smol_tok.pad_token = smol_tok.eos_token
    rows = bench_model("tiny-llama 4 × 128", tiny, tiny_tok, args.repeats)
    rows += bench_model("SmolLM2-135M-Instruct", smol, smol_tok, args.repeats)
    table = "\n".join(["| model | job (16 prompts) | plain ms, median (min–max) | steered ms "
                       "| overhead (medians) | overhead (paired, median, min…max) "
                       "| hook's add alone |", "|---|---|---|---|---|---|---|", *rows, "",
                       "| map fit | ms, median (min–max) |", "|---|---|",
                       bench_map(args.repeats)])
    print_and_record("## Steering overhead and the ConTrans map", table, args.write)


if __name__ == "__main__":
    main()
