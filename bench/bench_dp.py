"""DP-SGD (Opacus, per-sample clipping + noise) against non-private training of a tiny LLaMA.

Both arms run the same model, data, loss (mean token loss per sequence) and AdamW; the anchor
is the non-private step measured in the same run. Steps are timed in interleaved repeats
(median kept); memory is the extra peak RSS of the first three steps over the RSS after building
the model, each arm in a fresh process (freed memory stays with the allocator otherwise).

    python bench/bench_dp.py            # about a minute on 2 CPU cores
    python bench/bench_dp.py --write    # also append the table to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_aggregation import PeakRSS
from record import append_result
from transformers import LlamaConfig, LlamaForCausalLM

from fedprivacy.lm import lm_logits
from fedprivacy.privacy.dp import DPConfig, make_private, sequence_losses

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(args: argparse.Namespace) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=args.seq_len, bos_token_id=0, eos_token_id=0, pad_token_id=0))


def batches(args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.steps):
        ids = torch.randint(1, args.vocab, (args.batch_size, args.seq_len), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def build_step(private: bool, args: argparse.Namespace) -> Callable[[dict[str, torch.Tensor]], float]:
    """One training step of a fresh model: DP-SGD through ``make_private``, or plain AdamW."""
    model = tiny_llama(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if private:
        return make_private(model, optimizer, args.batch_size / args.dataset_size, DPConfig(),
                            batch_size=args.batch_size).step

    def step(batch: dict[str, torch.Tensor]) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = sequence_losses(lm_logits(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def seconds_per_step(private: bool, args: argparse.Namespace, data: list[dict[str, torch.Tensor]]) -> float:
    step = build_step(private, args)
    for batch in data[:2]:
        step(batch)
    start = time.perf_counter()
    for batch in data:
        step(batch)
    return (time.perf_counter() - start) / len(data)


def extra_peak_rss(private: bool, args: argparse.Namespace) -> int | None:
    """Extra peak RSS (bytes) of three steps over the RSS after building the model (fresh process)."""
    torch.set_num_threads(args.threads)
    step = build_step(private, args)
    with PeakRSS() as mem:
        for batch in batches(args)[:3]:
            step(batch)
    return mem.extra


def markdown(
    args: argparse.Namespace, params: int, times: dict[str, list[float]], memory: dict[str, int | None]
) -> str:
    rows = {arm: (statistics.median(times[arm]), None if memory[arm] is None else memory[arm] / 2**20) for arm in times}
    lines = [f"Tiny LLaMA ({params:,} parameters: d={args.hidden}, {args.layers} layers, vocab {args.vocab}), "
             f"batch {args.batch_size} x {args.seq_len} tokens, AdamW, {args.steps} steps x {args.repeats} "
             f"interleaved repeats (median), torch threads {torch.get_num_threads()}; DP-SGD: Opacus hooks, "
             "noise 1.0, clip 1.0:", "",
             "| training | ms / step | extra peak RSS (MiB) |", "|---|---:|---:|"]
    for arm, (seconds, mib) in rows.items():
        lines.append(f"| {arm} | {1000 * seconds:.1f} | {'n/a' if mib is None else f'{mib:.0f}'} |")
    (base_s, base_m), (dp_s, dp_m) = rows["non-private"], rows["DP-SGD"]
    mem_ratio = "n/a" if not base_m or dp_m is None else f"{dp_m / base_m:.1f}x"
    lines.append(f"| DP-SGD / non-private | {dp_s / base_s:.1f}x | {mem_ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dataset-size", type=int, default=1600, help="sets the DP sample rate")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more only add sync cost here)")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = batches(args)
    arms = {"non-private": False, "DP-SGD": True}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm, private in arms.items():
            times[arm].append(seconds_per_step(private, args, data))
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        memory = {arm: pool.apply(extra_peak_rss, (private, args)) for arm, private in arms.items()}
    params = sum(p.numel() for p in tiny_llama(args).parameters())
    table = markdown(args, params, times, memory)
    print(table)
    if args.write:
        append_result("DP-SGD vs non-private training (bench/bench_dp.py)", table)


if __name__ == "__main__":
    main()
