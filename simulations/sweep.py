"""Sweeps: many runs of one base config, one after another or N at a time, and one comparison.

A sweep file::

    base: ../quickstart.yaml          # relative to the sweep file
    name: my-sweep
    seeds: [0, 1]
    overrides: [rounds=2]             # applied to every run
    runs:                             # named variants (a list of dotlist overrides each) ...
      - {name: fedavg, overrides: []}
      - {name: depn, overrides: ["client.pipeline=[sft,depn]"]}
    grid:                             # ... and/or a grid: every combination of the values
      train.lr: [0.001, 0.003]
    metrics: [final.eval_loss]        # summary keys for the Markdown table and the plot
    baseline: fedavg                  # optional: every metric's change against this variant,
                                      # and the per-task comparison when runs score tasks
    tradeoff: [final.eval_ppl, privacy.exposure_mean]  # optional: x, y of tradeoff.png

writes ``results.csv`` (one row per run: its overrides and flattened ``summary.json``),
``results.md`` (mean ± std over seeds per variant; with a ``baseline``, each metric's relative
change against it and, when the runs score tasks, each variant's per-task scores, the share of
tasks it improves over the baseline and its average improvement rate, the measures of
FewFedWeight's paper), ``comparison.png`` and, with ``tradeoff``,
``tradeoff.png`` (one metric against another, a point per variant with its std over seeds).

A run that fails is a row of ``results.csv`` (``status`` failed, its ``error``) and of the
"Failed runs" table of ``results.md``; the sweep goes on and `fedprivacy sweep` exits non-zero.
Run again on the same folder, a sweep reuses a finished run only if the ``config.yaml`` in its
folder equals the run's resolved config (apart from ``out_dir``, ``name`` and ``tracking``); a
run made with other overrides is moved aside (``<run>.replaced-<time>``) and run anew.

With ``parallel`` N > 1, up to N runs go on at once (threads, each driving its own
simulation processes and holding its own folder's lock); folders, rows and their order are
those of a sequential sweep, and a run's row (and MLflow run) is written once every run
before it has ended. An interrupt stops all of them; rerun, the sweep resumes as usual.

With ``ray_address`` ("auto" or HOST:PORT, ``--ray``) each run is a Ray task on that existing
cluster, up to ``parallel`` at once (0: as many as its CPUs fit); folders and rows are again a
sequential sweep's, plus ``ran_on`` (the node and process that ran it). A task reserves the
CPUs its run's private Ray may take (``simulation.ray_cpus``, 1 when 0), or none when the run's
own simulation attaches to a cluster (its clients then reserve theirs). Every node needs this
package installed and the sweep folder on a file system it shares with the others.

Seeds of one sweep can run apart (``--seeds``: only those; on other machines, at other times)
and be compared as one: ``--merge`` adds the rows of another ``results.csv`` of the same sweep
file to the tables (`merged_rows`: each must be a run of the sweep with the same overrides, and
not one this sweep runs; it is marked ``merged_from``, and neither rerun nor tracked).

With ``tracking.backend: mlflow`` (the same for every run) the sweep is a parent MLflow run
and each run is logged nested under it as it ends (`fedprivacy.tracking`); the experiment is
``tracking.experiment`` or the sweep's ``name``, the store by default ``<sweep>/mlruns``.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import statistics
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedprivacy.config import ConfigError, ExperimentConfig, TrackingConfig, flatten, load_config
from fedprivacy.report import RunFolder, flatten_dict
from fedprivacy.simulations.errors import describe
from fedprivacy.tracking import SweepTracking, check


@dataclass
class SweepRun:
    variant: str
    seed: int
    overrides: list[str]


@dataclass
class Sweep:
    base: Path
    name: str
    runs: list[SweepRun]
    metrics: list[str] = field(default_factory=list)
    baseline: str = ""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tradeoff: list[str] = field(default_factory=list)


def _grid(grid: dict[str, list[Any]]) -> list[tuple[str, list[str]]]:
    keys = list(grid)
    combos = itertools.product(*(grid[k] for k in keys))
    return [(",".join(f"{k}={v}" for k, v in zip(keys, combo)),
             [f"{k}={v}" for k, v in zip(keys, combo)]) for combo in combos]


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; every run's config is validated before any run starts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(spec, dict)
    unknown = set(spec) - {"base", "name", "seeds", "overrides", "runs", "grid", "metrics",
                           "baseline", "tradeoff"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}")
    if "base" not in spec:
        raise ConfigError(f"{path}: 'base' (the config file to sweep over) is required")
    base = (path.parent / spec["base"]).resolve()
    common = [str(o) for o in spec.get("overrides", [])]
    variants = [(str(r["name"]), [str(o) for o in r.get("overrides", [])])
                for r in spec.get("runs", [])]
    if spec.get("grid"):
        grid = _grid(spec["grid"])
        variants = [(f"{v}|{g}" if v else g, vo + go) for (v, vo), (g, go)
                    in itertools.product(variants or [("", [])], grid)]
    variants = variants or [("base", [])]
    seeds = [int(s) for s in spec.get("seeds", [0])]
    # seed-major: one full pass over the variants comes first, so a cut-short sweep compares
    runs = [SweepRun(name, seed, common + overrides + [f"seed={seed}"])
            for seed in seeds for name, overrides in variants]
    trackings = []
    for run in runs:
        try:
            trackings.append(load_config(base, run.overrides).tracking)
        except ConfigError as err:
            raise ConfigError(f"{path}: run {run.variant!r} (seed {run.seed}): {err}") from err
    if any(t != trackings[0] for t in trackings):
        raise ConfigError(f"{path}: tracking: must be the same for every run (one parent run "
                          "holds them all)")
    baseline = str(spec.get("baseline", ""))
    if baseline and baseline not in {r.variant for r in runs}:
        raise ConfigError(f"{path}: baseline {baseline!r} is not one of the runs' names")
    tradeoff = [str(m) for m in spec.get("tradeoff", [])]
    if tradeoff and len(tradeoff) != 2:
        raise ConfigError(f"{path}: tradeoff: two metrics, x then y (got {tradeoff})")
    return Sweep(base, str(spec.get("name", path.stem)), runs,
                 [str(m) for m in spec.get("metrics", [])], baseline, trackings[0], tradeoff)


FINISHED, REUSED, FAILED = "finished", "reused", "failed"
# a run's folder, name and tracking do not change what it computes (sections by their name)
IGNORED_KEYS = ("out_dir", "name", "tracking")


@dataclass
class SweepOutcome:
    """A sweep's folder and its rows (one per run, ``status`` finished, reused or failed)."""

    root: Path
    rows: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == FAILED]


def only_seeds(sweep: Sweep, seeds: list[int]) -> Sweep:
    """The sweep with the runs of ``seeds`` only (``--seeds``)."""
    known = sorted({r.seed for r in sweep.runs})
    if unknown := sorted(set(seeds) - set(known)):
        raise ConfigError(f"--seeds: {unknown} not among the sweep's seeds {known}")
    return dataclasses.replace(sweep, runs=[r for r in sweep.runs if r.seed in seeds])


def _cell(text: str) -> Any:
    """A ``results.csv`` cell as the row held it: int, float or str (``None`` when empty)."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def merged_rows(paths: list[str | Path], full: Sweep, sweep: Sweep) -> list[dict[str, Any]]:
    """The rows of other ``results.csv`` files of the sweep file ``full`` (all its seeds), to
    compare with the runs of ``sweep`` (``full``, or `only_seeds` of it). Each row must be a
    run of ``full`` with the same overrides, in no other file and not a run of ``sweep``; each
    gets ``merged_from``."""
    expected = {(r.variant, r.seed): " ".join(r.overrides) for r in full.runs}
    seen = {(r.variant, r.seed): "this sweep runs it too (leave its seed out: --seeds)"
            for r in sweep.runs}
    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"--merge: file not found: {path}")
        with path.open(newline="") as fh:
            raws = list(csv.DictReader(fh))
        for line, raw in enumerate(raws, start=2):
            row = {k: v for k, v in ((k, _cell(t)) for k, t in raw.items()) if v is not None}
            key = (str(row.get("variant", "")), row.get("seed"))
            where = f"--merge {path}, line {line} ({key[0]!r}, seed {key[1]})"
            if key not in expected:
                raise ConfigError(f"{where}: not a run of this sweep file")
            if str(row.get("overrides", "")) != expected[key]:
                raise ConfigError(f"{where}: made with overrides {row.get('overrides')!r}, the "
                                  f"sweep file's are {expected[key]!r}")
            if key in seen:
                raise ConfigError(f"{where}: {seen[key]}")
            seen[key] = f"already merged from {path}"
            rows.append({**row, "merged_from": str(path)})
    return rows


def sweep_root(sweep: Sweep, out_dir: str | Path | None = None) -> Path:
    """The sweep's absolute folder: ``out_dir`` or ``runs/sweep-<name>-<time>``."""
    path = Path(out_dir) if out_dir else (
        Path("runs") / f"sweep-{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}")
    return path.expanduser().resolve()


def run_config(sweep: Sweep, run: SweepRun, folder: Path) -> ExperimentConfig:
    """The resolved config of one run of the sweep, in ``folder``."""
    return load_config(sweep.base, run.overrides + [
        f"out_dir={folder}", f"name={sweep.name}-{_slug(run.variant)}-seed{run.seed}"])


def same_config(folder: Path, cfg: ExperimentConfig) -> bool:
    """Whether the resolved config stored in ``folder`` (``config.yaml``) equals ``cfg``,
    apart from the output folder, the name and tracking. A missing or unreadable one differs."""
    try:
        stored = flatten(load_config(folder / "config.yaml"))
    except ConfigError:
        return False
    return _computed(stored) == _computed(flatten(cfg))


def _computed(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config without the keys that do not change what a run computes."""
    return {k: v for k, v in flat.items() if k.split(".")[0] not in IGNORED_KEYS}


def _set_aside(folder: Path) -> Path:
    """Move a run folder made with another config out of the way (kept, never deleted)."""
    RunFolder(folder).check_unlocked()
    target = folder.with_name(f"{folder.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
    folder.rename(target)
    return target


def _run_one(sweep: Sweep, run: SweepRun, folder: Path, progress: bool,
             stop: threading.Event | None) -> dict[str, Any]:
    """Run (or reuse, or resume) one run; its row's status and flattened summary. ``stop``
    (parallel sweeps only) interrupts the run once set."""
    from fedprivacy.simulations.runner import run_experiment

    cfg = run_config(sweep, run, folder)
    if folder.is_dir() and any(folder.iterdir()) and not same_config(folder, cfg):
        _set_aside(folder)  # made with other overrides: neither reused nor resumed
    if (folder / "summary.json").is_file():  # finished earlier, same config: reuse it
        return {"status": REUSED, **flatten_dict(RunFolder(folder).summary())}
    # new, or cut short (then it resumes from its checkpoint); the sweep tracks it
    extra = {} if stop is None else {"stop": stop}
    done = run_experiment(cfg, progress=progress, track=False, **extra)
    return {"status": FINISHED, **flatten_dict(done.summary())}


def _row(sweep: Sweep, run: SweepRun, root: Path, progress: bool,
         stop: threading.Event | None = None) -> dict[str, Any]:
    """One run's ``results.csv`` row; a run that fails is a row with its error."""
    row = _row_head(run, root)
    try:
        row.update(_run_one(sweep, run, Path(row["run_dir"]), progress, stop))
    except Exception as err:  # recorded; the next runs still run
        row.update(status=FAILED, error=describe(err))
    return row


def _row_head(run: SweepRun, root: Path) -> dict[str, Any]:
    """The columns of a run's row that come before its outcome (its folder among them)."""
    return {"variant": run.variant, "seed": run.seed, "overrides": " ".join(run.overrides),
            "run_dir": str(root / f"{_slug(run.variant)}-seed{run.seed}")}


def run_sweep(sweep: Sweep, out_dir: str | Path | None = None, progress: bool = True,
              parallel: int = 1, ray_address: str = "",
              merged: list[dict[str, Any]] | None = None) -> SweepOutcome:
    """Run every run of ``sweep``, ``parallel`` at a time (as Ray tasks on the cluster at
    ``ray_address`` when one is named); write the comparison after each.

    Runs are named ``<variant>-seed<seed>``; on the same ``out_dir`` a finished run is reused
    if its stored config equals the new one (else it is set aside and rerun) and a cut-short
    one resumes, so a killed sweep goes on where it stopped. A run that fails is a row with its
    error (``status`` failed) and the sweep goes on; an interrupt stops the sweep. With
    tracking on, each run is logged under the sweep's parent MLflow run as it ends (in
    parallel: once the runs before it have ended). Per-run progress bars are off in parallel.
    The ``merged`` rows (`merged_rows`) come first in the tables; they are not runs here."""
    if parallel < (0 if ray_address else 1):
        raise ConfigError(f"--parallel: must be >= 1, or 0 with --ray (got {parallel})")
    check(sweep.tracking)
    if ray_address:
        from fedprivacy.simulations.runner import check_ray_cluster

        check_ray_cluster(ray_address, key="--ray")
    root = sweep_root(sweep, out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ended: dict[int, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    with SweepTracking(sweep.tracking, root, sweep.tracking.experiment or sweep.name) as tracker:
        def record(index: int, row: dict[str, Any]) -> None:
            ended[index] = row
            while len(rows) in ended:  # rows (and tracking) in the sweep's order
                rows.append(ended[len(rows)])
                tracker.add(rows[-1])
            write_results(root, (merged or []) + [ended[i] for i in sorted(ended)],
                          sweep.metrics, sweep.baseline, sweep.tradeoff)

        if ray_address:
            _run_on_ray(sweep, root, parallel, ray_address, record)
        elif parallel == 1:
            for index, run in enumerate(sweep.runs):
                record(index, _row(sweep, run, root, progress))
        else:
            _run_parallel(sweep, root, parallel, record)
    return SweepOutcome(root, rows)


def _run_parallel(sweep: Sweep, root: Path, parallel: int,
                  record: Callable[[int, dict[str, Any]], None]) -> None:
    """Run the sweep's runs ``parallel`` at a time, ``record``ing each row as it ends; an
    interrupt (Ctrl-C, SIGTERM) stops the running simulations and cancels the rest."""
    from fedprivacy.simulations.runner import sigterm_as_interrupt

    stop = threading.Event()
    with (ThreadPoolExecutor(parallel, thread_name_prefix="sweep-run") as pool,
          sigterm_as_interrupt()):
        try:  # an interrupt while the runs are still handed out stops the started ones too
            futures = {pool.submit(_row, sweep, run, root, False, stop): index
                       for index, run in enumerate(sweep.runs)}
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            stop.set()  # the pool's exit waits for the running ones to stop their processes
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def task_cpus(cfg: ExperimentConfig) -> int:
    """The CPUs a run's Ray task reserves: none when its simulation attaches to a cluster
    (its clients reserve their own there), else what its private Ray may use (1 when 0)."""
    return 0 if cfg.simulation.ray_address else max(cfg.simulation.ray_cpus, 1)


def _ray_row(sweep: Sweep, run: SweepRun, root: Path) -> dict[str, Any]:
    """A run's row, from inside its Ray task; ``ran_on`` names the node and process."""
    import os

    import ray

    node = ray.get_runtime_context().get_node_id()[:12]
    return {**_row(sweep, run, root, False), "ran_on": f"{node}:{os.getpid()}"}


def _run_on_ray(sweep: Sweep, root: Path, parallel: int, address: str,
                record: Callable[[int, dict[str, Any]], None]) -> None:
    """Run each run as a task on the Ray cluster at ``address``, ``parallel`` in flight (0: all
    submitted, the cluster schedules them), ``record``ing rows as they end. A task that dies
    (its worker or node lost) is a failed row; an interrupt cancels the tasks (each stops its
    simulation as on Ctrl-C) and waits for them to end."""
    import ray

    from fedprivacy.simulations.runner import sigterm_as_interrupt

    ray.init(address=address, logging_level="ERROR", configure_logging=False)
    try:
        task = ray.remote(max_retries=0)(_ray_row)
        queue = list(enumerate(sweep.runs))
        pending: dict[Any, int] = {}
        with sigterm_as_interrupt():
            try:
                while queue or pending:
                    while queue and (parallel == 0 or len(pending) < parallel):
                        index, run = queue.pop(0)
                        cpus = task_cpus(run_config(sweep, run, root / "_"))
                        pending[task.options(num_cpus=cpus).remote(sweep, run, root)] = index
                    [ref], _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the task itself was lost
                        row = {**_row_head(sweep.runs[index], root), "status": FAILED,
                               "error": describe(err)}
                    record(index, row)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref)  # a KeyboardInterrupt inside: the run stops its processes
                ray.wait(list(pending), num_returns=len(pending), timeout=120)
                raise
    finally:
        ray.shutdown()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


def write_results(root: Path, rows: list[dict[str, Any]], metrics: list[str],
                  baseline: str = "", tradeoff: list[str] | None = None) -> None:
    """``results.csv``, ``results.md``, ``comparison.png`` (and ``tradeoff.png``) from the rows
    so far."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (root / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = aggregate(rows, metrics)
    text = results_markdown(table, metrics)
    if baseline and baseline in table:
        text += "\n" + change_markdown(table, metrics, baseline)
        if any(k.startswith(TASK_PREFIX) for r in rows for k in r):
            text += "\n" + improvement_markdown(improvement(rows, baseline), baseline)
    text += failures_markdown(rows)
    (root / "results.md").write_text(text)
    plot_comparison(table, metrics, root / "comparison.png")
    if tradeoff:
        plot_tradeoff(table, tradeoff[0], tradeoff[1], root / "tradeoff.png")


def failures_markdown(rows: list[dict[str, Any]]) -> str:
    """The failed runs and their errors ("" when none failed)."""
    failed = [r for r in rows if r.get("status") == FAILED]
    if not failed:
        return ""
    lines = [f"| {r['variant']} | {r['seed']} | {str(r.get('error', '')).replace('|', '/')} |"
             for r in failed]
    return ("\nFailed runs\n\n| variant | seed | error |\n|---|---|---|\n"
            + "\n".join(lines) + "\n")


TASK_PREFIX = "tasks."


def improvement(rows: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per variant: mean per-task score over seeds, the share of tasks above the baseline and
    the average improvement rate mean_t (s_t − b_t) / b_t (tasks with b_t = 0 left out)."""
    columns = sorted({k for r in rows for k in r if k.startswith(TASK_PREFIX)})
    means = {v: {c[len(TASK_PREFIX):]: m[c][0] for c in columns if c in m}
             for v, m in aggregate(rows, columns).items()}
    base = means[baseline]
    out: dict[str, dict[str, Any]] = {}
    for variant, scores in means.items():
        shared = [t for t in scores if t in base]
        rates = [(scores[t] - base[t]) / base[t] for t in shared if base[t] > 0]
        out[variant] = {
            "tasks": scores, "average": statistics.fmean(scores.values()) if scores else 0.0,
            "improved_share": sum(scores[t] > base[t] for t in shared) / max(len(shared), 1),
            "improvement_rate": statistics.fmean(rates) if rates else 0.0}
    return out


def improvement_markdown(table: dict[str, dict[str, Any]], baseline: str) -> str:
    tasks = sorted({t for v in table.values() for t in v["tasks"]})
    head = (f"Per-task scores (mean over seeds) against `{baseline}`\n\n| variant | "
            + " | ".join(tasks) + " | average | tasks improved | avg. improvement rate |\n|---|"
            + "---|" * (len(tasks) + 3) + "\n")
    lines = [f"| {v} | " + " | ".join(f"{row['tasks'].get(t, float('nan')):.3f}" for t in tasks)
             + f" | {row['average']:.3f} | {row['improved_share']:.0%} | "
               f"{row['improvement_rate']:+.1%} |" for v, row in table.items()]
    return head + "\n".join(lines) + "\n"


Table = dict[str, dict[str, tuple[float, float, int]]]  # variant -> metric -> (mean, std, n)


def aggregate(rows: list[dict[str, Any]], metrics: list[str]) -> Table:
    """variant -> metric -> (mean, std, n) over seeds (non-numeric or missing values skipped)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        out[variant] = {}
        for metric in metrics:
            values = [float(r[metric]) for r in group if isinstance(r.get(metric), (int, float))
                      and not isinstance(r.get(metric), bool)]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                out[variant][metric] = (statistics.fmean(values), std, len(values))
    return out


def change_markdown(table: Table, metrics: list[str], baseline: str) -> str:
    """Each variant's relative change of each metric's mean against the baseline's mean,
    (m_v − m_b) / |m_b| ("–" where either is missing or the baseline's mean is 0)."""
    base = table[baseline]
    head = (f"Change against `{baseline}` (of the means)\n\n| variant | " + " | ".join(metrics)
            + " |\n|---|" + "---|" * len(metrics) + "\n")
    lines = []
    for variant, values in table.items():
        cells = [f"{(values[m][0] - base[m][0]) / abs(base[m][0]):+.1%}"
                 if m in values and m in base and base[m][0] != 0 else "–" for m in metrics]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def results_markdown(table: Table, metrics: list[str]) -> str:
    head = "| variant | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"
    lines = []
    for variant, values in table.items():
        cells = [f"{values[m][0]:.4g} ± {values[m][1]:.2g} (n={values[m][2]})" if m in values
                 else "–" for m in metrics]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot_comparison(table: Table, metrics: list[str], path: Path) -> None:
    """One bar chart per metric, variants side by side, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    variants = list(table)
    for ax, metric in zip(axes[0], metrics):
        means = [table[v].get(metric, (float("nan"), 0, 0))[0] for v in variants]
        stds = [table[v].get(metric, (0, 0.0, 0))[1] for v in variants]
        ax.bar(range(len(variants)), means, yerr=stds, capsize=3)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize="small")
        ax.set_title(metric, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tradeoff(table: Table, x: str, y: str, path: Path) -> None:
    """``y`` against ``x``: one labelled point per variant that has both, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for variant, values in table.items():
        if x in values and y in values:
            ax.errorbar(values[x][0], values[y][0], xerr=values[x][1], yerr=values[y][1],
                        fmt="o", capsize=3)
            ax.annotate(variant, (values[x][0], values[y][0]), fontsize="small",
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
