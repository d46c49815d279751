"""Benchmark: FewFedWeight server work per round.

1. Aggregation throughput (GB/s of client payload consumed) of ``StreamingAverage`` (clients added
   one at a time with ``add``, or all at once with ``add_many``) against
   Flower's ``aggregate_arrayrecords`` and against memory bandwidth (a plain numpy copy of the same
   client bytes into a preallocated buffer), for K clients and transformer-like models of 1M,
   10M and 100M float32 parameters; plus the extra peak RSS of each method over its inputs.
   Goal: streaming average >= 50% of the copy figure.
2. Pseudo-data generation time per round for one client (``generate_pseudo_samples``) on a tiny
   LLaMA-style model, for a classification and a generation task.

    python bench/bench_aggregation.py            # ~1-2 min on 2 cores
    python bench/bench_aggregation.py --write    # also append the tables to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from record import append_result

from fedprivacy.aggregation import StreamingAverage, array_view
from fedprivacy.pseudo import generate_pseudo_samples

ROOT = Path(__file__).resolve().parents[1]


def transformer_layout(n_params: int, layers: int = 4, vocab: int = 4096) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a LLaMA-like model (embeddings, attention, gated FFN, norms, head) with
    about ``n_params`` parameters: 2·V·d + L·(4d² + 3·d·f + 2d) + d, f = 8d/3 rounded."""
    per_d2 = layers * (4 + 3 * 8 / 3)
    d = int((-2 * vocab + (4 * vocab**2 + 4 * per_d2 * n_params) ** 0.5) / (2 * per_d2))
    d = max(8, d // 8 * 8)
    f = (8 * d // 3) // 8 * 8
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (vocab, d)}
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (d, d),
                   p + "self_attn.v_proj.weight": (d, d), p + "self_attn.o_proj.weight": (d, d),
                   p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                   p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
                   p + "post_attention_layernorm.weight": (d,)}
    return shapes | {"norm.weight": (d,), "lm_head.weight": (vocab, d)}


def make_records(shapes: dict[str, tuple[int, ...]], count: int, seed: int) -> list[ArrayRecord]:
    rng = np.random.default_rng(seed)
    return [ArrayRecord({k: Array(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()})
            for _ in range(count)]


class PeakRSS:
    """Extra peak resident memory of a block over the RSS at its start (Linux /proc, else None)."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.extra: int | None = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
            self._start = self._read("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is not None:
            self.extra = self._read("VmHWM") - self._start

    @staticmethod
    def _read(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(field)


def measure(run: Callable[[], object]) -> tuple[float, int | None]:
    """Wall time of one run and its extra peak RSS."""
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - start
        del out
    return seconds, mem.extra


def bench_size(n_params: int, clients: int, distinct: int, repeats: int) -> list[dict[str, object]]:
    shapes = transformer_layout(n_params)
    records = make_records(shapes, distinct, seed=n_params % 1000)
    picked = [records[i % distinct] for i in range(clients)]
    weights = list(np.random.default_rng(0).uniform(0.5, 1.5, clients))
    replies = [RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": float(w)})})
               for r, w in zip(picked, weights)]
    model_bytes = sum(4 * int(np.prod(s)) for s in shapes.values())
    payload = clients * model_bytes
    buffers = {k: np.empty(s, np.float32) for k, s in shapes.items()}

    def copy() -> None:
        for record in picked:
            for key, array in record.items():
                np.copyto(buffers[key], array_view(array, key))

    def streaming() -> ArrayRecord:
        avg = StreamingAverage(picked[0])
        for record, w in zip(picked, weights):
            avg.add(record, w)
        return avg.result()

    def streaming_many() -> ArrayRecord:
        avg = StreamingAverage(picked[0])
        avg.add_many(picked, weights)
        return avg.result()

    def flower() -> ArrayRecord:
        return aggregate_arrayrecords(replies, "num-examples")

    reference = flower()
    error = {name: max(float(np.abs(out[k].numpy() - reference[k].numpy()).max()) for k in shapes)
             for name, out in [("StreamingAverage.add", streaming()),
                               ("StreamingAverage.add_many", streaming_many())]}
    del reference
    methods = {"numpy copy (memory bandwidth)": copy, "StreamingAverage.add": streaming,
               "StreamingAverage.add_many": streaming_many, "Flower aggregate_arrayrecords": flower}
    best = dict.fromkeys(methods, float("inf"))
    peaks: dict[str, int | None] = dict.fromkeys(methods)
    for _ in range(repeats):  # interleaved, so a change in machine load hits every method
        for name, run in methods.items():
            seconds, peak = measure(run)
            best[name] = min(best[name], seconds)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0, peak)
    copy_rate = payload / best["numpy copy (memory bandwidth)"]
    return [{"params": sum(int(np.prod(s)) for s in shapes.values()), "keys": len(shapes),
             "method": name, "seconds": best[name], "gbps": payload / best[name] / 1e9,
             "of_copy": payload / best[name] / copy_rate,
             "peak_mb": None if peaks[name] is None else peaks[name] / 2**20,
             "peak_models": None if peaks[name] is None else peaks[name] / model_bytes,
             "max_abs_diff": error.get(name)}
            for name in methods]


def tiny_llama(vocab_words: list[str]) -> tuple[torch.nn.Module, object]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|[^ \n]+"), behavior="removed", invert=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="[EOS]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab_words), hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    return LlamaForCausalLM(config).eval(), tokenizer


def bench_pseudo(count: int, repeats: int) -> list[dict[str, object]]:
    filler = [f"w{i}" for i in range(200)]
    words = ["[PAD]", "[UNK]", "[EOS]", "\n", "Classify", "Summarize", "the", "review.", "text.",
             "Input:", "Answer:", "positive", "negative", "neutral", *filler]
    model, tokenizer = tiny_llama(words)
    base = {"answer_format": "", "template": "{instruction}\nInput: {input}\nAnswer:"}
    tasks = {"classification (3 labels)": {**base, "instruction": "Classify the review.",
                                            "labels": '["positive", "negative", "neutral"]'},
             "generation (greedy, 8 tokens)": {**base, "instruction": "Summarize the text.",
                                               "labels": ""}}
    rows = []
    for name, description in tasks.items():
        def run(description: dict = description) -> object:
            return generate_pseudo_samples(model, tokenizer, description, count=count,
                                           max_new_tokens=12, temperature=1.0, top_p=0.95, seed=0,
                                           batch_size=16, answer_max_new_tokens=8)
        run()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rows.append({"task": name, "count": count, "seconds": float(np.median(times)),
                     "per_sample_ms": 1000 * float(np.median(times)) / count})
    return rows


def markdown(agg: list[dict[str, object]], pseudo: list[dict[str, object]], clients: int,
             threads: int, pseudo_threads: int) -> str:
    lines = [f"Aggregation of {clients} clients (float32; GB/s = client payload bytes / best time; "
             f"torch threads {threads}):", "",
             "| params | keys | method | time (s) | GB/s | vs copy | extra peak RSS (MB) | × model "
             "| max abs diff vs Flower |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in agg:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        models = "n/a" if r["peak_models"] is None else f"{r['peak_models']:.2f}"
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {r['params']:,} | {r['keys']} | {r['method']} | {r['seconds']:.3f} | "
                     f"{r['gbps']:.2f} | {r['of_copy']:.0%} | {peak} | {models} | {diff} |")
    if pseudo:
        lines += ["", f"Pseudo-data generation for one client per round (tiny LLaMA d=64, 2 layers, "
                      f"sampled inputs of up to 12 tokens, batch 16, torch threads {pseudo_threads}):", "",
                  "| task | samples | time (s) | ms / sample |", "|---|---:|---:|---:|"]
        lines += [f"| {r['task']} | {r['count']} | {r['seconds']:.2f} | {r['per_sample_ms']:.1f} |"
                  for r in pseudo]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="parameter counts, comma-separated")
    parser.add_argument("--distinct", type=int, default=2,
                        help="distinct client records, reused in turn (saves RAM at 100M)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed aggregation runs per method, interleaved (best kept)")
    parser.add_argument("--pseudo-count", type=int, default=32)
    parser.add_argument("--pseudo-repeats", type=int, default=3, help="timed runs (median kept)")
    parser.add_argument("--pseudo-threads", type=int, default=1,
                        help="torch threads for the tiny model (more threads only add sync cost)")
    parser.add_argument("--skip-pseudo", action="store_true")
    parser.add_argument("--write", action="store_true", help="append the tables to BENCHMARKS.md")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    agg = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        agg += bench_size(size, args.clients, max(1, min(args.distinct, args.clients)), args.repeats)
        gc.collect()
    pseudo = []
    if not args.skip_pseudo:
        torch.set_num_threads(args.pseudo_threads)
        pseudo = bench_pseudo(args.pseudo_count, args.pseudo_repeats)
        torch.set_num_threads(threads)
    table = markdown(agg, pseudo, args.clients, threads, args.pseudo_threads)
    print(table)
    if args.write:
        append_result("Aggregation and pseudo data (bench/bench_aggregation.py)", table)


if __name__ == "__main__":
    main()
