"""Experiment tracking: run folders logged to MLflow after the fact.

A finished run (`fedprivacy.simulations.runner`), and a sweep as a parent run with its runs
nested (`fedprivacy.simulations.sweep`), are logged from their folders, so tracking never
touches training and can be redone later (``fedprivacy track FOLDER``):

- params: the resolved config (``config.yaml``), flattened as for Flower's ``run_config``;
- metrics at ``step`` = round: every number of each ``metrics.jsonl`` record (``server.*``,
  ``train.*``, ``evaluate.*``, per client ``clients.<id>.*``, ``durations.*``, ``strategy.*``,
  ``dropped``: replies dropped), the round's privacy ledger (``privacy.*``: ε, δ, exposure,
  extraction), then the summary's other numbers at the last round (``final.*``, ``tasks.*``);
- artifacts: the plots (``*.png``, in their sub-folders), ``summary.md``, ``summary.json``,
  ``config.yaml``, ``versions.json``, ``metrics.jsonl``; a sweep's parent run gets its
  ``results.csv``, ``results.md`` and ``comparison.png``.

Logging a folder again replaces its earlier MLflow run (matched by the tag
``fedprivacy.folder``). With ``tracking.backend: none`` nothing here runs and mlflow is never
imported.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from fedprivacy.config import ConfigError, TrackingConfig, flatten, load_config
from fedprivacy.report import RunFolder, privacy_ledger

if TYPE_CHECKING:
    from mlflow.entities import Metric

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_DIR = "mlruns"  # the default store, in the run's (the sweep's) folder
FOLDER_TAG = "fedprivacy.folder"
PARENT_TAG = "mlflow.parentRunId"  # what mlflow.start_run(nested=True) sets; the UI nests by it
RUN_FILES = ("summary.md", "summary.json", "config.yaml", "versions.json", "metrics.jsonl")
SWEEP_FILES = ("results.csv", "results.md", "comparison.png")
ROUND_SKIPPED = ("round", "time", "dropped")  # the step, the timestamp; dropped is counted
INSTALL = "pip install 'fedprivacy[tracking]' (mlflow-skinny)"
_BAD_KEY_CHARS = re.compile(r"[^\w.\- :]")  # MLflow's metric names allow only these


class TrackingError(RuntimeError):
    """Logging to the tracking backend failed; the message names the setting to fix."""


def check(tracking: TrackingConfig) -> None:
    """Raise `ConfigError` naming ``tracking.backend`` if it cannot be used (no import)."""
    if tracking.backend == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"tracking.backend: mlflow is not installed: {INSTALL}, or set "
                          "tracking.backend=none")


def store_uri(tracking: TrackingConfig, folder: Path) -> str:
    """``tracking.uri``, or the local SQLite store in ``folder`` (MLflow 3 refuses its old
    file store by default)."""
    return tracking.uri or f"sqlite:///{(folder / STORE_DIR / 'mlflow.db').resolve()}"


def numeric_leaves(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, number) of every finite number in nested dicts and lists (list items by
    index); characters MLflow refuses in a key become ``_``."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from numeric_leaves(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numeric_leaves(item, f"{key}.{i}")
    elif isinstance(value, (int, float)) and math.isfinite(value):
        yield _BAD_KEY_CHARS.sub("_", key), float(value)


def round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` record's metrics: its numbers, ``dropped`` (the replies dropped)
    and the round's privacy ledger (``privacy.*``, `fedprivacy.report.privacy_ledger`)."""
    values = dict(numeric_leaves({k: v for k, v in record.items() if k not in ROUND_SKIPPED}))
    values["dropped"] = float(len(record.get("dropped", [])))
    values.update(numeric_leaves(privacy_ledger(record), "privacy"))
    return values


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _artifacts(run_dir: Path) -> Iterator[tuple[Path, str | None]]:
    """(file, artifact sub-folder) of a run folder's files that MLflow keeps."""
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            yield run_dir / name, None
    for plot in sorted(run_dir.rglob("*.png")):
        sub = plot.parent.relative_to(run_dir)
        if sub.parts[:1] != (STORE_DIR,):  # not the copies in a local store
            yield plot, sub.as_posix() if sub.parts else None


class Tracker:
    """One MLflow experiment in one store; every call raises whatever MLflow raises."""

    def __init__(self, tracking: TrackingConfig, folder: Path, experiment: str) -> None:
        self.uri = store_uri(tracking, folder)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports sent
        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # table set-up
        artifacts = None  # the server's choice, except beside a SQLite store (not ./mlruns)
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///")).resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            artifacts = str(db.parent / "artifacts")
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifacts)
        else:
            self.experiment_id = found.experiment_id
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(self.experiment_id)

    def start(self, folder: Path, tags: dict[str, str], start_ms: int | None = None) -> str:
        """A new MLflow run named after ``folder``; the runs logged from it before are deleted."""
        path = str(folder.resolve())
        quote = '"' if "'" in path else "'"  # MLflow's filter strings have no escapes
        for old in self.client.search_runs([self.experiment_id],
                                           f"tags.`{FOLDER_TAG}` = {quote}{path}{quote}"):
            self.client.delete_run(old.info.run_id)
        run = self.client.create_run(self.experiment_id, start_time=start_ms,
                                     run_name=folder.name, tags={FOLDER_TAG: path, **tags})
        return run.info.run_id

    def log_run(self, run_dir: Path, parent_id: str | None = None,
                tags: dict[str, str] | None = None, status: str = "FINISHED") -> str:
        """Log one run folder (params, metrics per round, summary, artifacts); its run id."""
        from mlflow.entities import Metric, Param

        cfg = load_config(run_dir / "config.yaml")
        rounds = RunFolder(run_dir).rounds()
        times = [float(r["time"]) for r in rounds if "time" in r]
        start_ms, end_ms = (_ms(min(times)), _ms(max(times))) if times else (None, None)
        run_tags = {"mlflow.source.name": "fedprivacy", **(tags or {})}
        if parent_id:
            run_tags[PARENT_TAG] = parent_id
        commit = _read_json(run_dir / "versions.json").get("git_commit", "unknown")
        if commit != "unknown":
            run_tags["mlflow.source.git.commit"] = commit
        run_id = self.start(run_dir, run_tags, start_ms)
        metrics: list[Metric] = []
        for record in rounds:
            stamp = _ms(float(record.get("time", time.time())))
            metrics += [Metric(k, v, stamp, int(record["round"]))
                        for k, v in round_metrics(record).items()]
        logged, last = {m.key for m in metrics}, max((m.step for m in metrics), default=0)
        metrics += [Metric(k, v, end_ms or _ms(time.time()), last)
                    for k, v in numeric_leaves(_read_json(run_dir / "summary.json"))
                    if k not in logged]
        params = [Param(k, str(v)) for k, v in flatten(cfg).items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        for path, sub in _artifacts(run_dir):
            self.client.log_artifact(run_id, str(path), sub)
        self.client.set_terminated(run_id, status, end_time=end_ms)
        return run_id


def _failure(err: Exception, tracking: TrackingConfig, uri: str) -> str:
    """One line naming the setting to fix."""
    if isinstance(err, ImportError):
        return f"tracking.backend=mlflow: mlflow cannot be imported ({err}): {INSTALL}"
    if isinstance(err, ConfigError):  # a run folder's config.yaml
        return str(err)
    text = " ".join(str(err).split())
    return f"tracking.uri={tracking.uri!r} ({uri}): {type(err).__name__}: {text}"


def track_run(run_dir: Path, tracking: TrackingConfig, experiment: str) -> str | None:
    """Log a finished run if ``tracking.backend`` says so; its MLflow run id, or None when
    off or failed. A failure is a logged warning: the run folder is kept as it is."""
    if tracking.backend == "none":
        return None
    try:
        return Tracker(tracking, run_dir, experiment).log_run(run_dir)
    except Exception as err:  # tracking never loses a finished run
        log.warning("tracking failed (the run folder is intact; log it later with fedprivacy "
                    "track %s --uri URI): %s", run_dir,
                    _failure(err, tracking, store_uri(tracking, run_dir)))
        return None


def _child_tags(row: dict[str, Any]) -> dict[str, str]:
    tags = {"fedprivacy.variant": str(row["variant"]), "fedprivacy.seed": str(row["seed"]),
            "fedprivacy.status": str(row["status"])}
    if row.get("error"):
        tags["fedprivacy.error"] = str(row["error"])
    return tags


class SweepTracking:
    """A sweep's parent MLflow run around its runs, each logged nested as it ends (`add`).

    ``strict=False`` (a live sweep): a failure is a logged warning and tracking stops, the
    sweep goes on; ``strict=True`` (``fedprivacy track``): it raises `TrackingError`. On exit
    the parent gets the sweep's results as artifacts, the variants and seeds as params, and the
    status FINISHED, FAILED (a run or the tracking failed) or KILLED (an interrupt)."""

    def __init__(self, tracking: TrackingConfig, root: Path, experiment: str,
                 strict: bool = False) -> None:
        self.tracking, self.root, self.experiment, self.strict = tracking, root, experiment, strict
        self.tracker: Tracker | None = None
        self.parent_id = ""
        self.run_ids: list[str] = []  # the parent's, then its runs'
        self.rows: list[dict[str, Any]] = []

    def _guard(self, step: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except Exception as err:
            message = _failure(err, self.tracking, store_uri(self.tracking, self.root))
            if self.strict:
                raise TrackingError(message) from err
            log.warning("tracking failed at the %s (the sweep goes on untracked; log it later "
                        "with fedprivacy track %s --uri URI): %s", step, self.root, message)
            self.tracker = None
            return None

    def __enter__(self) -> SweepTracking:
        if self.tracking.backend != "none":
            self.tracker = self._guard("parent run", Tracker, self.tracking, self.root,
                                       self.experiment)
        if self.tracker is not None:
            self.parent_id = self._guard("parent run", self.tracker.start, self.root,
                                         {"fedprivacy.sweep": "true"}) or ""
            self.run_ids += [self.parent_id] if self.parent_id else []
        return self

    def add(self, row: dict[str, Any]) -> None:
        """Log one finished, reused or failed run (its ``results.csv`` row) under the parent."""
        self.rows.append(row)
        run_dir = Path(row["run_dir"])
        if self.tracker is None or not self.parent_id or not (run_dir / "config.yaml").is_file():
            return
        status = "FAILED" if row["status"] == "failed" else "FINISHED"
        run_id = self._guard(f"run {run_dir.name}", self.tracker.log_run, run_dir,
                             self.parent_id, _child_tags(row), status)
        self.run_ids += [run_id] if run_id else []

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.tracker is None or not self.parent_id:
            return
        if exc_type is not None:  # interrupted, or strict and failed: that error is the one
            with contextlib.suppress(Exception):
                self._finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            return
        failed = any(r["status"] == "failed" for r in self.rows)
        self._guard("parent run", self._finish, "FAILED" if failed else "FINISHED")

    def _finish(self, status: str) -> None:
        from mlflow.entities import Metric, Param

        assert self.tracker is not None
        client = self.tracker.client
        variants = list(dict.fromkeys(str(r["variant"]) for r in self.rows))
        seeds = list(dict.fromkeys(int(r["seed"]) for r in self.rows))
        failed = sum(r["status"] == "failed" for r in self.rows)
        client.log_batch(self.parent_id, params=[
            Param("sweep.runs", str(len(self.rows))), Param("sweep.variants", json.dumps(variants)),
            Param("sweep.seeds", json.dumps(seeds))],
            metrics=[Metric("failed_runs", float(failed), _ms(time.time()), 0)])
        for name in SWEEP_FILES:
            if (self.root / name).is_file():
                client.log_artifact(self.parent_id, str(self.root / name))
        client.set_terminated(self.parent_id, status)


def track_folder(folder: Path, uri: str = "", experiment: str = "") -> tuple[str, list[str]]:
    """Log an existing run folder, or a sweep folder (one with ``results.csv``) and its runs,
    with the tracking settings of its ``config.yaml`` (``uri`` and ``experiment`` replace them
    when given; the backend is mlflow). Returns the store's URI and the MLflow run ids; raises
    `TrackingError` or `ConfigError` naming what to fix."""
    folder = folder.expanduser().resolve()
    results = folder / "results.csv"
    if results.is_file():
        rows = list(csv.DictReader(results.open()))
        for row in rows:  # a sweep's runs are its sub-folders, wherever it was moved
            row["run_dir"] = str(folder / Path(row["run_dir"]).name)
        runs = [Path(r["run_dir"]) for r in rows if (Path(r["run_dir"]) / "config.yaml").is_file()]
        if not runs:
            raise ConfigError(f"{results}: no run of the sweep has a config.yaml")
        first = load_config(runs[0] / "config.yaml")
        # a sweep names its runs <sweep name>-<run folder name> (fedprivacy.simulations.sweep)
        name = first.name.removesuffix(f"-{runs[0].name}")
    elif (folder / "config.yaml").is_file():
        first, rows = load_config(folder / "config.yaml"), []
        name = first.name
    else:
        raise ConfigError(f"{folder}: neither a run folder (config.yaml) nor a sweep folder "
                          "(results.csv)")
    tracking = replace(first.tracking, backend="mlflow", uri=uri or first.tracking.uri,
                       experiment=experiment or first.tracking.experiment)
    check(tracking)
    experiment = tracking.experiment or name
    if not rows:
        try:
            tracker = Tracker(tracking, folder, experiment)
            return tracker.uri, [tracker.log_run(folder)]
        except Exception as err:
            raise TrackingError(_failure(err, tracking, store_uri(tracking, folder))) from err
    with SweepTracking(tracking, folder, experiment, strict=True) as sweep:
        for row in rows:
            sweep.add(row)
    return store_uri(tracking, folder), sweep.run_ids
