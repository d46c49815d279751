"""The run folder: resolved config, versions, per-round metrics, checkpoints, summary, plots."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fedprivacy.config import ExperimentConfig, to_yaml
from fedprivacy.data.federated import task_names

PACKAGES = ("fedprivacy", "flwr", "ray", "torch", "transformers", "opacus", "datasets",
            "flwr-datasets", "omegaconf", "numpy")


def cpu() -> dict[str, str]:
    """The CPU a run computed on: its model, core count and the vector kernels torch picked
    (runs of one config and seed can differ in float rounding across these)."""
    import torch

    model = platform.processor() or "unknown"
    try:
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return {"cpu": model, "cpu_count": str(os.cpu_count()),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def versions() -> dict[str, str]:
    """Versions of Python, the key packages and the git commit, and the CPU (`cpu`), for
    reproducibility."""
    out = {"python": platform.python_version(), "platform": platform.platform(), **cpu()}
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


class RunFolderLocked(RuntimeError):
    """The run folder belongs to a live run (its runner, or the watchdog cleaning up after it)."""


LOCK_FILE = ".run.lock"


class RunFolder:
    """One run's folder. Everything is written atomically so a killed run leaves no torn file.

    A round is committed by `save_round`: its checkpoint and its record are one atomic write of
    ``checkpoint/state.json``; the record is then appended to ``metrics.jsonl``, and `recover`
    (run by `load_checkpoint`) re-appends it if a kill came in between.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_dir = self.path / "checkpoint"
        self.model_dir = self.path / "model"
        self.lock_path = self.path / LOCK_FILE

    def write_config(self, cfg: ExperimentConfig) -> None:
        _atomic_write(self.path / "config.yaml", to_yaml(cfg))
        _atomic_write(self.path / "versions.json", json.dumps(versions(), indent=2))

    # --- the live run's lock ------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[int]:
        """Hold the folder's lock while the block runs; yield the lock's file descriptor.

        The lock (``flock`` on ``.run.lock``, which also names the holder's pid) is held as
        long as any process holds the descriptor: the runner hands it to its watchdog, so a
        killed run's folder stays locked until its processes are gone. Raises
        `RunFolderLocked` naming the folder and the holder's pid."""
        fd = _try_lock(self.lock_path)
        if fd is None:
            raise self._locked()
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield fd
        finally:
            os.close(fd)  # the lock goes with the last descriptor (no LOCK_UN: it is shared)

    def check_unlocked(self) -> None:
        """Raise `RunFolderLocked` if a live run holds this folder; writes nothing."""
        if not self.lock_path.is_file():
            return
        fd = _try_lock(self.lock_path)
        if fd is None:
            raise self._locked()
        os.close(fd)

    def _locked(self) -> RunFolderLocked:
        return RunFolderLocked(
            f"run folder {self.path.resolve()} is in use by a live run (pid "
            f"{_holder_pid(self.lock_path)}, see {self.lock_path.name}); wait for it to end or "
            f"stop it, then try again")

    # --- per-round metrics --------------------------------------------------------------
    def append_round(self, record: dict[str, Any]) -> None:
        """Append one record line; a torn last line (a kill in mid-append) is cut off first."""
        with self.metrics_path.open("ab+") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end:
                fh.seek(end - 1)
                if fh.read(1) != b"\n":  # rare: read it all, keep up to the last full line
                    fh.seek(0)
                    fh.truncate(fh.read().rfind(b"\n") + 1)
            fh.write((json.dumps(record, sort_keys=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def rounds(self) -> list[dict[str, Any]]:
        """Rounds recorded so far (the last record of a round number wins, for resumes).

        A torn last line (a kill in mid-append) is skipped."""
        if not self.metrics_path.is_file():
            return []
        by_round: dict[int, dict[str, Any]] = {}
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise ValueError(f"{self.metrics_path}: line {i + 1} is not JSON") from None
            by_round[int(rec["round"])] = rec
        return [by_round[k] for k in sorted(by_round)]

    def save_round(self, rnd: int, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        """Commit round ``rnd``: its checkpoint together with its record, then the record in
        ``metrics.jsonl``. Round 0 (the initial model) has no checkpoint, only its record."""
        if rnd > 0:
            self.save_checkpoint(rnd, arrays, record)
        self.append_round(record)

    def recover(self) -> None:
        """Append the checkpoint's round record if ``metrics.jsonl`` lacks it (a kill between
        the two writes of `save_round`). Idempotent."""
        state = self._checkpoint_state()
        record = state.get("record") if state else None
        if record is None or int(record["round"]) in {int(r["round"]) for r in self.rounds()}:
            return
        self.append_round(record)

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, round_: int, arrays: dict[str, np.ndarray],
                        record: dict[str, Any] | None = None) -> None:
        """The global arrays after ``round_`` (and its record), replacing the previous
        checkpoint atomically: the arrays go to a new file, then one ``os.replace`` of
        ``state.json`` switches to them."""
        from safetensors.numpy import save_file

        self.checkpoint_dir.mkdir(exist_ok=True)
        name = f"round-{round_:06d}.safetensors"
        tmp = self.checkpoint_dir / f".{name}.tmp{os.getpid()}"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        _fsync(tmp)
        tmp.replace(self.checkpoint_dir / name)
        state: dict[str, Any] = {"round": round_, "arrays": name}
        if record is not None:
            state["record"] = record
        state_tmp = self.checkpoint_dir / f".state.json.tmp{os.getpid()}"
        state_tmp.write_text(json.dumps(state, sort_keys=True))
        _fsync(state_tmp)
        state_tmp.replace(self.checkpoint_dir / "state.json")  # the commit
        for old in self.checkpoint_dir.iterdir():
            if old.name not in (name, "state.json"):
                old.unlink(missing_ok=True)

    def _checkpoint_state(self) -> dict[str, Any] | None:
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return None
        return json.loads(state_file.read_text())

    def load_checkpoint(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, arrays) of the last checkpoint, or None; re-appends its round record to
        ``metrics.jsonl`` if that lacks it (`recover`)."""
        from safetensors.numpy import load_file

        state = self._checkpoint_state()
        if state is None:
            return None
        self.recover()
        arrays_file = self.checkpoint_dir / state.get("arrays", "arrays.safetensors")
        return int(state["round"]), load_file(str(arrays_file))

    # --- summary ------------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
        _atomic_write(self.path / "summary.md", summary_markdown(summary))
        plot_rounds(self.rounds(), self.path / "curves.png")

    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())

    def add_to_summary(self, extra: dict[str, Any]) -> None:
        """Merge ``extra`` into a finished run's summary (``fedprivacy align`` on the run)."""
        self.write_summary({**self.summary(), **extra})


def _fsync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def _try_lock(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive ``flock``, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def summarize(cfg: ExperimentConfig, rounds: list[dict[str, Any]], started: float,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's headline numbers from its per-round records."""
    server = [r for r in rounds if r.get("server")]
    first, last = (server[0]["server"], server[-1]["server"]) if server else ({}, {})
    summary: dict[str, Any] = {
        "name": cfg.name, "seed": cfg.seed, "strategy": cfg.strategy.name,
        "client_steps": "+".join(cfg.client.pipeline),
        "num_clients": cfg.simulation.num_clients,
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


TASK_SCORES = {"tasks": "train.test_score", "tasks_val": "train.val_score",
               "tasks_global": "evaluate.accuracy"}


def task_scores(cfg: ExperimentConfig, record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task (one task per client: ``data.partition=by_task``), the mean over its clients of
    ``tasks``: the client's own model after local training, on its test split (``tasks_val``:
    on its validation split, for choosing settings), and ``tasks_global``: the global model's
    validation accuracy."""
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


def alignment_rows(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(metric, before, after) of one stage's summary section, perplexity last."""
    rows = [(k, v, result.get("after", {}).get(k)) for k, v in result.get("before", {}).items()]
    ppl = result.get("perplexity") or {}
    if ppl.get("before") is not None:  # the runner's, beside a stage's own (neutral text)
        label = "perplexity (server eval set)" if "perplexity" in result.get("before", {}) \
            else "perplexity"
        rows.append((label, ppl["before"], ppl["after"]))
    return rows


def summary_markdown(summary: dict[str, Any]) -> str:
    """A two-column Markdown table of the flattened summary, then the alignment stages'
    before/after table."""
    plain = {k: v for k, v in summary.items() if k != "alignment"}
    rows = [f"| {k} | {_fmt(v)} |" for k, v in flatten_dict(plain).items()]
    text = f"# Run {summary.get('name', '')}\n\n| metric | value |\n|---|---|\n" + \
        "\n".join(rows) + "\n"
    if summary.get("alignment"):
        text += "\n## Alignment (server's held-out data)\n\n| stage | metric | before | after |\n" \
                "|---|---|---|---|\n"
        for stage, result in summary["alignment"].items():
            text += "".join(f"| {stage} | {k} | {_fmt(b)} | {_fmt(a)} |\n"
                            for k, b, a in alignment_rows(result))
            chosen = {k: v for k, v in (result.get("chosen") or {}).items()
                      if not isinstance(v, dict)}
            if chosen:
                text += f"| {stage} | chosen on dev | " + \
                    ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items()) + " | |\n"
    return text


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> None:
    """Curves per round: server eval loss, mean client train and eval loss, per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    evaluated = [r for r in rounds if "eval_loss" in r.get("server", {})]
    axes[0].plot([r["round"] for r in evaluated], [r["server"]["eval_loss"] for r in evaluated],
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
