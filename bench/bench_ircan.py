"""Benchmark IRCAN's context-aware attribution on the real SmolLM2-135M-Instruct.

IRCAN (METHODS.md §1, eq. 1) scores FFN neuron i of layer l by integrated gradients from the
activation *without* the context to the activation *with* it, both at the prompt's last
position; the input is always the with-context prompt, only the last position of layer l is
patched, and the target is P(first token of the context's answer) there::

    Att_i = (a_w,i − a_wo,i)/m · Σ_k ∂P(y | c⊕q, a^l := a_wo + α_k (a_w − a_wo)) / ∂a_i

with α_k = k/m, k = 0…m−1 (Riemann left grid), m = 20, all 30 layers, float32. The "endpoint"
variant (IRCAN's code: ∂/∂a_w, each term weighted by α_k) is timed too.

Measured per MemoTrap-style prompt, timed interleaved (fast, plain, endpoint, captum, fast, …):
our engine's fast path (prefix KV cache, several layers per batch), its plain path, its endpoint
variant, and the anchor, captum's ``LayerIntegratedGradients`` run layer by layer.

How LayerIntegratedGradients expresses IRCAN's baseline: LIG takes the baseline *layer
activation* from a forward pass on the baseline *input*, which must have the input's shape; but
a_wo comes from a different, shorter prompt. So an identity module (the probe) is inserted on
layer l's FFN activation (input of ``mlp.down_proj``) at the last position, and the forward
function takes two inputs: the with-context ids and a switch s. With s = 1 the probe sees the
with-context prompt's own activation a_w; with s = 0 it is fed a_wo (recorded from the prompt
without context). Inputs (ids, 1) and baselines (ids, 0) therefore give LIG the layer
activations a_w and a_wo; in its m gradient passes LIG runs the inputs (ids, 1) and replaces the
probe's output with a_wo + α_k (a_w − a_wo), so it computes exactly the quantity above. The
forward function keeps only the last position's logits (``logits_to_keep=1``), as any careful
captum user would.

Also reported: the largest difference of scores against captum (relative to captum's largest
score), completeness (Σ_i Att_i of a layer against f(a_w) − f(a_wo), approximate with m = 20)
and the Jaccard overlap of the top-20 neurons (all layers) of the standard and endpoint
variants. Prints Markdown tables; ``--write`` appends them, with the command line, to
BENCHMARKS.md.

    python bench/bench_ircan.py [--examples 3 --repeats 5 --captum-repeats 1 --plain-repeats 1]
                                [--threads 1] [--probe-threads] [--write]

Captum and our plain path each take about 2 minutes per prompt on the shared 2 cores (our fast
path about 12 s), so they have their own, smaller repeat counts; the default run takes about
20 minutes there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import LayerIntegratedGradients
from record import print_and_record
from torch import nn

from fedprivacy import attribution, sites
from fedprivacy.models import build_model, load_tokenizer, smollm2_config

SECTION = "## IRCAN context-aware attribution on SmolLM2-135M (bench/bench_ircan.py)"

# MemoTrap-style prompts (written for this bench): the context asks for an ending that
# contradicts the memorised proverb. The prompt without context is ``prompt.split(": ")[-1]``.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ('Write a quote that ends in the word "early": Better late than', " early"),
    ('Write a quote that ends in the word "heavy": Absence makes the heart grow', " heavy"),
    ('Write a quote that ends in the word "thoughts": Actions speak louder than', " thoughts"),
    ('Write a quote that ends in the word "bread": The early bird catches the', " bread"),
    ('Write a quote that ends in the word "silver": All that glitters is not', " silver"),
)

METHODS = ("fast", "plain", "endpoint", "captum")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=3, help=f"prompts (≤ {len(EXAMPLES)})")
    parser.add_argument("--steps", type=int, default=20, help="m, Riemann steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our fast path")
    parser.add_argument(
        "--captum-repeats", type=int, default=1, help="timed runs of captum (the slow anchor)"
    )
    parser.add_argument(
        "--plain-repeats", type=int, default=1, help="timed runs of our plain path (as slow)"
    )
    parser.add_argument("--top", type=int, default=20, help="top-k neurons for the Jaccard")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on the shared 2 cores, 2 threads ran 2-3x slower; --probe-threads)",
    )
    parser.add_argument(
        "--probe-threads",
        action="store_true",
        help="first time the fast path and one captum layer at 1 and 2 threads (~2 min)",
    )
    parser.add_argument("--write", action="store_true", help="append the tables to BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=Path(__file__).parents[1] / "BENCHMARKS.md")
    return parser.parse_args(argv)


class Probe(nn.Identity):
    """The identity module that LayerIntegratedGradients attributes to (see the docstring)."""


def captum_lig(
    model: nn.Module,
    ids: torch.Tensor,
    token: int,
    a_wo: torch.Tensor,
    steps: int,
    layers: list[int] | None = None,
) -> torch.Tensor:
    """The anchor: captum's Riemann-left LayerIntegratedGradients, one layer at a time, on a
    probe at layer l's last-position FFN activation, baseline a_wo[l] (module docstring)."""
    probe = Probe()
    rows = []
    for layer in range(sites.num_layers(model)) if layers is None else layers:
        base = a_wo[layer]

        def forward(
            input_ids: torch.Tensor, switch: torch.Tensor, base=base, layer=layer
        ) -> torch.Tensor:
            def hook(hidden: torch.Tensor) -> torch.Tensor:
                last = torch.where(switch[:, None] > 0.5, hidden[:, -1], base.to(hidden.dtype))
                hidden = hidden.clone()
                hidden[:, -1] = probe(last)
                return hidden

            with sites.hooked(model, {f"ffn.{layer}": hook}):
                logits = model(input_ids=input_ids, logits_to_keep=1).logits[:, -1]
            return torch.softmax(logits, -1)[:, token]

        inputs = (ids[None], torch.ones(1))
        baselines = (ids[None], torch.zeros(1))
        lig = LayerIntegratedGradients(forward, probe)
        rows.append(
            lig.attribute(
                inputs,
                baselines=baselines,
                n_steps=steps,
                method="riemann_left",
                internal_batch_size=steps,
            )[0]
        )
    return torch.stack(rows)


def target_prob(
    model: nn.Module,
    ids: torch.Tensor,
    token: int,
    layer: int | None = None,
    value: torch.Tensor | None = None,
) -> float:
    """P(token) at the last position, with layer ``layer``'s last activation set to ``value``."""
    with torch.no_grad():
        if layer is None:
            logits = model(input_ids=ids[None], logits_to_keep=1).logits[0, -1]
        else:
            with attribution.patch_ffn(model, layer, len(ids) - 1, value):
                logits = model(input_ids=ids[None], logits_to_keep=1).logits[0, -1]
    return torch.softmax(logits, -1)[token].item()


def top_set(scores: torch.Tensor, k: int) -> set[int]:
    return set(scores.flatten().topk(k).indices.tolist())


def fmt_times(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.2f} s (1 run)"
    return f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f})"


def probe_threads(
    fast: Callable[[], torch.Tensor],
    captum_layer: Callable[[], torch.Tensor],
    threads: int,
    rounds: int = 2,
) -> str:
    """Time the fast path and captum on one layer at 1 and 2 threads, interleaved."""
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for count in (1, 2):
            torch.set_num_threads(count)
            for name, fn in (("fast path", fast), ("captum, one layer", captum_layer)):
                begin = time.perf_counter()
                fn()
                times.setdefault((name, count), []).append(time.perf_counter() - begin)
    torch.set_num_threads(threads)
    parts = [
        f"{name} {count} thread{'s' * (count > 1)} {min(t):.2f}–{max(t):.2f} s"
        for (name, count), t in times.items()
    ]
    return f"Thread check on example 1 ({rounds} interleaved rounds): " + "; ".join(parts) + "."


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    mc = smollm2_config()
    tokenizer = load_tokenizer(mc)
    model = build_model(mc, tokenizer, seed=0).float().eval()
    n_layers, d_ff = model.config.num_hidden_layers, model.config.intermediate_size
    m = args.steps
    examples = EXAMPLES[: args.examples]

    def prepared(prompt: str, answer: str):
        ids_w = tokenizer(prompt, return_tensors="pt").input_ids[0]
        ids_wo = tokenizer(prompt.split(": ")[-1], return_tensors="pt").input_ids[0]
        token = tokenizer(answer, add_special_tokens=False).input_ids[0]
        a_wo = attribution.ffn_activations(model, ids_wo, None, -1)
        return ids_w, ids_wo, token, a_wo

    def methods(ids_w, token, a_wo) -> dict[str, Callable[[], torch.Tensor]]:
        def ours(fast: bool, variant: str) -> Callable[[], torch.Tensor]:
            return lambda: attribution.integrated_gradients(
                model,
                ids_w,
                {-1: token},
                None,
                baseline=a_wo,
                steps=m,
                grid="left",
                variant=variant,
                fast=fast,
            )

        return {
            "fast": ours(True, "standard"),
            "plain": ours(False, "standard"),
            "endpoint": ours(True, "endpoint"),
            "captum": lambda: captum_lig(model, ids_w, token, a_wo, m),
        }

    # warm-up once (allocator, kernels) on the first prompt: the fast path and the endpoint
    # variant on all layers, the slow plain path and captum on one layer
    ids_w, _, token, a_wo = prepared(*examples[0])
    for variant in ("standard", "endpoint"):
        attribution.integrated_gradients(
            model, ids_w, {-1: token}, None, baseline=a_wo, steps=m, variant=variant, fast=True
        )
    attribution.integrated_gradients(
        model, ids_w, {-1: token}, [0], baseline=a_wo[:1], steps=m, fast=False
    )
    captum_lig(model, ids_w, token, a_wo, m, layers=[0])
    thread_note = (
        probe_threads(
            methods(ids_w, token, a_wo)["fast"],
            lambda: captum_lig(model, ids_w, token, a_wo, m, layers=[0]),
            args.threads,
        )
        if args.probe_threads
        else None
    )

    timing_rows, check_rows = [], []
    speedups = []
    for number, (prompt, answer) in enumerate(examples, 1):
        ids_w, ids_wo, token, a_wo = prepared(prompt, answer)
        a_w = attribution.ffn_activations(model, ids_w, None, -1)
        fns = methods(ids_w, token, a_wo)
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        result: dict[str, torch.Tensor] = {}
        for round_ in range(max(args.repeats, args.plain_repeats, args.captum_repeats)):
            for name in METHODS:
                wanted = {"captum": args.captum_repeats, "plain": args.plain_repeats}.get(
                    name, args.repeats
                )
                if round_ >= wanted:
                    continue
                begin = time.perf_counter()
                result[name] = fns[name]()
                times[name].append(time.perf_counter() - begin)
                print(
                    f"example {number} round {round_ + 1} {name}: {times[name][-1]:.2f} s",
                    flush=True,
                )
        ref = result["captum"]
        scale = ref.abs().max().item()

        def rel(x: torch.Tensor, y: torch.Tensor = ref, scale: float = scale) -> float:
            return (x - y).abs().max().item() / scale

        p_w = target_prob(model, ids_w, token)
        p_wo = target_prob(model, ids_wo, token)
        delta = torch.tensor(
            [
                p_w - target_prob(model, ids_w, token, layer, a_wo[layer])
                for layer in range(n_layers)
            ]
        )
        sums = result["fast"].sum(-1).double()
        gaps = (sums - delta.double()).abs() / delta.double().abs()
        worst = int(gaps.argmax())
        top_std, top_end = top_set(result["fast"], args.top), top_set(result["endpoint"], args.top)
        jaccard = len(top_std & top_end) / len(top_std | top_end)
        # sanity: the activation our engine interpolates to is the one recorded here
        assert torch.allclose(a_w, attribution.ffn_activations(model, ids_w, None, -1))

        med = {name: statistics.median(t) for name, t in times.items()}
        speedups.append(med["captum"] / med["fast"])
        word = answer.strip()
        timing_rows.append(
            f"| {number} “…{prompt.split(': ')[-1]}” → {word} | {len(ids_w)} / {len(ids_wo)} "
            f"| {fmt_times(times['fast'])} | {fmt_times(times['plain'])} "
            f"| {fmt_times(times['endpoint'])} | {fmt_times(times['captum'])} "
            f"| {med['captum'] / med['fast']:.1f}× | {med['captum'] / med['plain']:.1f}× |"
        )
        check_rows.append(
            f"| {number} | {p_w:.4f} / {p_wo:.4f} | {rel(result['fast']):.1e} "
            f"| {rel(result['plain']):.1e} | {rel(result['fast'], result['plain']):.1e} "
            f"| {gaps[worst].item():.1e} (layer {worst}: Σ {sums[worst].item():.3e}, "
            f"Δf {delta[worst].item():.3e}) "
            f"| {(sums - delta.double()).abs().max().item() / delta.abs().max().item():.1e} "
            f"| {jaccard:.2f} ({len(top_std & top_end)}/{len(top_std | top_end)}) |"
        )

    setup = (
        f"SmolLM2-135M-Instruct (real weights, float32, {n_layers} layers, d_ff={d_ff}); IRCAN "
        f"IG of all {n_layers} layers at the last position, m={m}, Riemann left grid, baseline "
        f"= activation without the context; {len(examples)} MemoTrap-style prompts"
    )
    counts = (args.repeats, args.plain_repeats, args.captum_repeats)
    repeats = (
        f"{args.repeats} interleaved runs of each"
        if len(set(counts)) == 1
        else f"interleaved runs: {args.repeats} of the fast path and the endpoint variant, "
        f"{args.plain_repeats} of the plain path, {args.captum_repeats} of captum"
    )
    lines = [
        f"Setup: {setup}. Seconds per example: median ({repeats}), min–max in brackets, after "
        f"one warm-up; threads {torch.get_num_threads()}.",
        "",
        "| example | tokens with / without context | ours, fast | ours, plain | ours, endpoint "
        "variant (fast) | captum LIG per layer | speed-up fast vs captum | plain vs captum |",
        "|---|---|---|---|---|---|---|---|",
        *timing_rows,
        "",
        "| example | P(y) with / without context | max rel. diff fast vs captum | plain vs "
        "captum | fast vs plain | completeness: worst rel. gap over layers | worst gap / max "
        "Δf | top-20 Jaccard standard vs endpoint |",
        "|---|---|---|---|---|---|---|---|",
        *check_rows,
        "",
        f"Speed-up of the fast path over captum: {min(speedups):.1f}–{max(speedups):.1f}× "
        "(target ≥ 5×). Max rel. diff = max |ours − captum| / max |captum| (target ≤ 1e-4). "
        "Completeness: per layer l, |Σ_i Att_i − (f(a_w) − f(a_wo))| / |f(a_w) − f(a_wo)| with "
        f"f = P(y | with-context prompt, a^l := ·), standard variant; a Riemann sum with m={m}, "
        "so approximate; worst gap / max Δf = max_l |Σ_i Att_i − Δf_l| / max_l |Δf_l|. "
        "Top-20: the 20 highest signed scores over all layers and neurons. The captum anchor "
        "is `LayerIntegratedGradients` on an identity probe at the patched activation; its "
        "baseline activation a_wo is fed in by a switch input, because LIG otherwise takes the "
        "baseline from an input of the same shape (the prompt without context is shorter); it "
        "computes the identical quantity. Its forward keeps only the last position's logits; "
        "our plain path computes the logits of every position and backpropagates through "
        "them, which is why it is slower than captum.",
    ]
    if thread_note:
        lines += ["", thread_note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_and_record(SECTION, run(args), args.write, args.output)


if __name__ == "__main__":
    main()
