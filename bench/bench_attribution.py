"""Benchmark the FFN integrated-gradients engine on a tiny LLaMA-style model.

Measures, on the same attributions (all layers, target at the last position, m steps, zero
baseline): our engine (fast and plain path) against captum's ``IntegratedGradients`` run layer
by layer on a function that patches the activation, the fast path against the plain path, and
DEPN privacy-neuron detection time per record. Prints a Markdown table; ``--write`` appends it,
with the command line, to BENCHMARKS.md.

    python bench/bench_attribution.py [--layers 4 --hidden 64 --seq-len 32 --steps 20] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf
from captum.attr import IntegratedGradients
from record import print_and_record

from fedprivacy import attribution, sites
from fedprivacy.privacy import depn

SECTION = "## FFN integrated gradients and DEPN (bench/bench_attribution.py)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--ffn", type=int, default=256, help="d_ff, neurons per layer")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="m, Riemann steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is kept")
    parser.add_argument("--records", type=int, default=4, help="records for DEPN detection")
    parser.add_argument("--private", type=int, default=8, help="private tokens per record")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny kernels gain nothing from more)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=Path(__file__).parents[1] / "BENCHMARKS.md")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> tf.PreTrainedModel:
    torch.manual_seed(args.seed)
    config = tf.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
    )
    return tf.LlamaForCausalLM(config).eval()


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time in seconds over ``repeats`` runs (after one warm-up) and the result."""
    result = fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), result


def captum_ig(model, ids: torch.Tensor, token: int, steps: int) -> torch.Tensor:
    """The anchor: captum's Riemann-left IG, one layer at a time, patching the last position
    of the 1-D sequence ``ids``."""
    position = len(ids) - 1
    rows = []
    for layer in range(sites.num_layers(model)):

        def forward(values: torch.Tensor, layer: int = layer) -> torch.Tensor:
            with attribution.patch_ffn(model, layer, position, values):
                logits = model(input_ids=ids[None].expand(len(values), -1)).logits[:, position]
            return torch.softmax(logits, -1)[:, token]

        end = attribution.ffn_activations(model, ids, layer, position)
        rows.append(
            IntegratedGradients(forward).attribute(
                end[None],
                baselines=torch.zeros_like(end)[None],
                n_steps=steps,
                method="riemann_left",
                internal_batch_size=steps,
            )[0]
        )
    return torch.stack(rows)


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    model = build_model(args)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab, (args.seq_len,), generator=generator)
    token = int(torch.randint(0, args.vocab, (1,), generator=generator))
    targets = {-1: token}
    m, n = args.steps, args.repeats

    t_captum, ref = timed(lambda: captum_ig(model, ids, token, m), n)
    t_fast, fast = timed(
        lambda: attribution.integrated_gradients(model, ids, targets, steps=m, fast=True), n
    )
    t_plain, plain = timed(
        lambda: attribution.integrated_gradients(model, ids, targets, steps=m, fast=False), n
    )

    records = torch.randint(0, args.vocab, (args.records, args.seq_len), generator=generator)
    private = torch.zeros_like(records, dtype=torch.bool)
    private[:, -args.private :] = True
    t_depn, found = timed(
        lambda: depn.detect_privacy_neurons(model, records, private, steps=m, top_z=20), 1
    )

    scale = ref.abs().max().item()
    what = (
        f"tiny LLaMA L={args.layers} d={args.hidden} d_ff={args.ffn} T={args.seq_len}; "
        f"IG of all layers at the last position, m={m}, zero baseline"
    )
    lines = [
        f"Setup: {what}. Median of {n} runs; threads {torch.get_num_threads()}.",
        "",
        "| measurement | time | anchor | anchor time | speed-up | max abs diff (rel.) |",
        "|---|---|---|---|---|---|",
        f"| our IG, fast path | {fmt_time(t_fast)} | captum IG per layer | {fmt_time(t_captum)}"
        f" | {t_captum / t_fast:.1f}× | {(fast - ref).abs().max().item():.2e}"
        f" ({(fast - ref).abs().max().item() / scale:.1e}) |",
        f"| our IG, plain path | {fmt_time(t_plain)} | captum IG per layer"
        f" | {fmt_time(t_captum)} | {t_captum / t_plain:.1f}×"
        f" | {(plain - ref).abs().max().item():.2e}"
        f" ({(plain - ref).abs().max().item() / scale:.1e}) |",
        f"| our IG, fast path | {fmt_time(t_fast)} | our plain path | {fmt_time(t_plain)}"
        f" | {t_plain / t_fast:.1f}× | {(fast - plain).abs().max().item():.2e} |",
        f"| DEPN detection per record ({args.private} private tokens, all layers)"
        f" | {fmt_time(t_depn / args.records)} | – | – | – | – |",
        "",
        f"DEPN selected {len(found.neurons)} neurons from {len(found.votes)} candidates.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_and_record(SECTION, run(args), args.write, args.output)


if __name__ == "__main__":
    main()
