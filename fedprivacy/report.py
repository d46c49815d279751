"""The run folder: resolved config, versions, per-round metrics, checkpoints, summary, plots."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fedprivacy.config import ExperimentConfig, to_yaml
from fedprivacy.data.federated import task_names

PACKAGES = ("fedprivacy", "flwr", "ray", "torch", "transformers", "opacus", "datasets",
            "flwr-datasets", "omegaconf", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python, the key packages and the git commit, for reproducibility."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        out["git_commit"] = "unknown"
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (lists and scalars kept as values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class RunFolder:
    """One run's folder. Everything is written atomically so a killed run leaves no torn file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_dir = self.path / "checkpoint"
        self.model_dir = self.path / "model"

    def write_config(self, cfg: ExperimentConfig) -> None:
        _atomic_write(self.path / "config.yaml", to_yaml(cfg))
        _atomic_write(self.path / "versions.json", json.dumps(versions(), indent=2))

    # --- per-round metrics --------------------------------------------------------------
    def append_round(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rounds(self) -> list[dict[str, Any]]:
        """Rounds recorded so far (the last record of a round number wins, for resumes)."""
        if not self.metrics_path.is_file():
            return []
        by_round: dict[int, dict[str, Any]] = {}
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_round[int(rec["round"])] = rec
        return [by_round[k] for k in sorted(by_round)]

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, round_: int, arrays: dict[str, np.ndarray]) -> None:
        """The global arrays after ``round_``, replacing the previous checkpoint atomically."""
        from safetensors.numpy import save_file

        tmp = self.path / f".checkpoint.tmp{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                  str(tmp / "arrays.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"round": round_}))
        if self.checkpoint_dir.exists():
            old = self.path / f".checkpoint.old{os.getpid()}"
            self.checkpoint_dir.rename(old)
            tmp.rename(self.checkpoint_dir)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            tmp.rename(self.checkpoint_dir)

    def load_checkpoint(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, arrays) of the last checkpoint, or None."""
        from safetensors.numpy import load_file

        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return None
        done = int(json.loads(state_file.read_text())["round"])
        return done, load_file(str(self.checkpoint_dir / "arrays.safetensors"))

    # --- summary ------------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
        _atomic_write(self.path / "summary.md", summary_markdown(summary))
        plot_rounds(self.rounds(), self.path / "curves.png")

    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())


def summarize(cfg: ExperimentConfig, rounds: list[dict[str, Any]], started: float,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's headline numbers from its per-round records."""
    server = [r for r in rounds if r.get("server")]
    first, last = (server[0]["server"], server[-1]["server"]) if server else ({}, {})
    summary: dict[str, Any] = {
        "name": cfg.name, "seed": cfg.seed, "strategy": cfg.strategy.name,
        "client_steps": "+".join(cfg.client.steps), "num_clients": cfg.simulation.num_clients,
        "rounds": max((int(r["round"]) for r in rounds), default=0),
        "wall_s": round(time.time() - started, 2),
        "dropped_replies": sum(len(r.get("dropped", [])) for r in rounds),
        "initial": first, "final": last,
    }
    evaluate = [r["evaluate"] for r in rounds if r.get("evaluate")]
    if evaluate:
        summary["clients_final"] = evaluate[-1]
    trained = [r for r in rounds if r.get("clients")]
    if trained:
        summary["privacy"] = privacy_ledger(trained[-1])
        summary.update(task_scores(cfg, trained[-1]))
    summary.update(extra or {})
    return summary


TASK_SCORES = {"tasks": "train.test_score", "tasks_global": "evaluate.accuracy"}


def task_scores(cfg: ExperimentConfig, record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task (one task per client: ``data.partition=by_task``), the mean over its clients of
    ``tasks``: the client's own model after local training, on its test split, and
    ``tasks_global``: the global model's validation accuracy."""
    if cfg.data.source != "tasks" or cfg.data.partition != "by_task":
        return {}
    names = task_names(cfg.data)
    out: dict[str, dict[str, float]] = {}
    for section, metric in TASK_SCORES.items():
        scores: dict[str, list[float]] = {}
        for client, row in record.get("clients", {}).items():
            if client.isdigit() and metric in row:
                scores.setdefault(names[int(client) % len(names)], []).append(row[metric])
        if scores:
            out[section] = {task: sum(v) / len(v) for task, v in scores.items()}
            out.setdefault("task_mean", {})[section] = (
                sum(out[section].values()) / len(out[section]))
    return out


def privacy_ledger(record: dict[str, Any]) -> dict[str, Any]:
    """Privacy figures of a round: canary exposure and extraction of the global model (as the
    clients measured it), ε and δ of DP-SGD (the largest over clients), DEPN's edits."""
    clients = record.get("clients", {})
    ledger: dict[str, Any] = {}
    evaluate = record.get("evaluate", {})
    for key in ("privacy.exposure_mean", "privacy.extraction_rate"):
        if key in evaluate:
            ledger[key.split(".", 1)[1]] = evaluate[key]
    per_canary = {c: row["evaluate.privacy.exposure"] for c, row in clients.items()
                  if "evaluate.privacy.exposure" in row}
    if per_canary:
        ledger["exposure_per_canary"] = per_canary
    epsilons = [row["train.dp_sgd.epsilon"] for row in clients.values()
                if "train.dp_sgd.epsilon" in row]
    if epsilons:
        ledger["epsilon"] = max(epsilons)
        ledger["delta"] = max(row["train.dp_sgd.delta"] for row in clients.values()
                              if "train.dp_sgd.delta" in row)
    edited = [row["train.depn.edited"] for row in clients.values() if "train.depn.edited" in row]
    if edited:
        ledger["edited_neurons_mean"] = sum(edited) / len(edited)
    return ledger


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """A two-column Markdown table of the flattened summary."""
    rows = [f"| {k} | {_fmt(v)} |" for k, v in flatten_dict(summary).items()]
    return f"# Run {summary.get('name', '')}\n\n| metric | value |\n|---|---|\n" + \
        "\n".join(rows) + "\n"


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> None:
    """Curves per round: server eval loss, mean client train and eval loss, per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["round"] for r in rounds if "eval_loss" in r.get("server", {})]
    axes[0].plot(xs, [r["server"]["eval_loss"] for r in rounds if "eval_loss" in r.get("server", {})],
                 "o-", label="global model (server eval)")
    for stage, style in (("train", "s--"), ("evaluate", "^:")):
        pts = [(r["round"], r[stage]["train_loss" if stage == "train" else "eval_loss"])
               for r in rounds if r.get(stage) and ("train_loss" if stage == "train"
                                                     else "eval_loss") in r[stage]]
        if pts:
            axes[0].plot(*zip(*pts), style, label=f"clients' mean {stage} loss")
    axes[0].set(xlabel="round", ylabel="loss", title="Loss per round")
    axes[0].legend()
    clients = sorted({c for r in rounds for c in r.get("clients", {})}, key=str)
    for client in clients:
        pts = [(r["round"], r["clients"][client]["evaluate.eval_loss"]) for r in rounds
               if "evaluate.eval_loss" in r.get("clients", {}).get(client, {})]
        if pts:
            axes[1].plot(*zip(*pts), "o-", label=f"client {client}")
    axes[1].set(xlabel="round", ylabel="eval loss", title="Per-client evaluation")
    if clients:
        axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
