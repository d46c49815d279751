"""DEPN's z curve after the last round, on the global models of finished privacy runs.

Each client of the run detects privacy neurons on the run's final global model with its own
records and the run's ``client.depn`` settings (as ``client.depn`` would after the last round;
``--max-records`` replaces the run's record count), the guard off so that z alone moves; the
union of the clients' top-z neurons is zeroed (as the server's `NeuronEditMerge` does), and the
canaries' exact exposure, extraction and the server's held-out perplexity are measured. One
more row per run applies the guard (``client.depn.utility_budget``) to the top ``top_z``
(the run's, or ``--top-z``): z chosen by the client's validation perplexity, not by the canaries.
z = 0 is the run as it ended.

    python scripts/depn_z_curve.py runs/reproduce-privacy/fedavg-seed0 \\
        runs/reproduce-privacy/fedavg-seed1 --max-records 4 --z 0 5 10 20 40 80 \\
        --out docs/results/privacy/z-curve
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

from fedprivacy import editing
from fedprivacy.config import load_config
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import build_client_data
from fedprivacy.data.records import derive_seed
from fedprivacy.evaluation import evaluate_loss, perplexity, server_eval_set
from fedprivacy.methods.depn import METHOD as DEPN
from fedprivacy.models import load_pretrained, load_tokenizer
from fedprivacy.privacy.depn import PrivacyNeurons, client_privacy_neurons, guard_held_out
from fedprivacy.privacy.ledger import canary_leakage


def measure(model, tokenizer, clients, eval_set, cfg) -> dict[str, float]:
    """Mean exposure and extraction over every client's canaries; server perplexity."""
    canaries = [c for data in clients for c in data.canaries]
    leak = canary_leakage(model, tokenizer, canaries, "exact", seed=cfg.seed,
                          max_candidates=cfg.evaluation.exposure_max_candidates)
    loss, _ = evaluate_loss(model, eval_set, cfg.train.eval_batch_size)
    return {"exposure": leak["exposure_mean"], "extraction": leak["extraction_rate"],
            "ppl": perplexity(loss)}


def curve(run: Path, zs: list[int], overrides: dict[str, int]) -> list[dict[str, float]]:
    cfg = load_config(run / "config.yaml")
    cfg.model.preset, cfg.model.name_or_path, cfg.model.gguf_file = "", str(run / "model"), ""
    model, tokenizer = load_pretrained(cfg.model).eval(), load_tokenizer(cfg.model)
    n = cfg.simulation.num_clients
    clients = [build_client_data(cfg.data, i, n, cfg.seed) for i in range(n)]
    encode = lambda records: encode_records(tokenizer, records, cfg.data.max_length)  # noqa: E731
    eval_set = server_eval_set(cfg, tokenizer)
    settings = dataclasses.replace(DEPN.settings_of(cfg), **overrides)
    loose = dataclasses.replace(settings, top_z=max(zs + [settings.top_z]),
                                utility_budget=-1.0)
    ranked, guarded = [], []
    for i, data in enumerate(clients):
        seed = derive_seed(cfg.seed, "client", cfg.rounds, i) % 2**31
        train, held_out = encode(data.train), encode(data.validation)
        found = client_privacy_neurons(model, train, held_out, loose, cfg.train.batch_size, seed)[0]
        ranked.append(found.neurons)
        top = PrivacyNeurons(found.neurons[:settings.top_z])
        guarded.append(guard_held_out(model, top, held_out, settings.utility_budget,
                                      cfg.train.batch_size).neurons)
    rows = []
    for label, union in [(str(z), {n for r in ranked for n in r[:z]}) for z in zs] + [
            (f"{settings.top_z}, guarded", {n for g in guarded for n in g})]:
        handle = editing.scale_neurons(model, PrivacyNeurons(sorted(union)).by_layer(), 0.0)
        rows.append({"run": run.name, "z": label, "zeroed": len(union),
                     **measure(model, tokenizer, clients, eval_set, cfg)})
        handle.undo()
    return rows


def table(rows: list[dict]) -> str:
    """Per z: mean (min-max over runs) of each measure."""
    out = ["| z per client | neurons zeroed | exposure (bits) | extraction | perplexity |",
           "|---|---|---|---|---|"]
    def cell(group: list[dict], key: str, fmt: str) -> str:
        values = [r[key] for r in group]
        return (f"{statistics.fmean(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"
                if len(values) > 1 else f"{values[0]:{fmt}}")

    for z in dict.fromkeys(r["z"] for r in rows):
        group = [r for r in rows if r["z"] == z]
        out.append(f"| {z} | {cell(group, 'zeroed', '.0f')} | {cell(group, 'exposure', '.2f')} | "
                   f"{cell(group, 'extraction', '.3f')} | {cell(group, 'ppl', '.3f')} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for run in dict.fromkeys(r["run"] for r in rows):
        points = [r for r in rows if r["run"] == run and r["z"].isdigit()]
        ax.plot([r["ppl"] for r in points], [r["exposure"] for r in points], "o-", label=run)
        for r in points:
            ax.annotate(f"z={r['z']}", (r["ppl"], r["exposure"]), fontsize="x-small",
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("perplexity (server's PII-free held-out text)")
    ax.set_ylabel("exposure (exact, bits)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished privacy run folders")
    parser.add_argument("--z", nargs="+", type=int, default=[0, 5, 10, 20, 40, 80])
    parser.add_argument("--max-records", type=int, help="client.depn.max_records (default: the run's)")
    parser.add_argument("--top-z", type=int, help="client.depn.top_z of the guarded row (default: the run's)")
    parser.add_argument("--out", type=Path, help="folder for z_curve.md/.json/.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    overrides = {key: value for key, value in (("max_records", args.max_records),
                                               ("top_z", args.top_z)) if value is not None}
    rows = [row for run in args.runs for row in curve(run, args.z, overrides)]
    text = table(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "z_curve.md").write_text(text)
        (args.out / "z_curve.json").write_text(json.dumps(rows, indent=1))
        plot(rows, args.out / "z_curve.png")


if __name__ == "__main__":
    main()
