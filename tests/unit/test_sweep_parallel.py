"""`fedprivacy sweep --parallel N` schedules N runs at once and writes what a sequential sweep
writes (`run_experiment` stands in for the simulation, as in test_sweep_reliability)."""

import csv
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fedprivacy.config import ExperimentConfig
from fedprivacy.report import RunFolder
from fedprivacy.simulations import runner
from fedprivacy.simulations import sweep as sweep_module
from fedprivacy.simulations.cli import main
from tests.tiny import lr_sweep

pytestmark = pytest.mark.unit


class ConcurrentRuns:
    """A finished run after ``delays[lr]`` seconds; counts how many run at once. A run whose
    lr is ``interrupt_lr`` presses Ctrl-C (SIGINT) and then waits for ``stop``."""

    def __init__(self, delays: dict[float, float], interrupt_lr: float | None = None) -> None:
        self.delays, self.interrupt_lr = delays, interrupt_lr
        self.lock, self.running, self.most = threading.Lock(), 0, 0
        self.started: list[str] = []
        self.stopped: list[str] = []

    def __call__(self, cfg: ExperimentConfig, progress: bool = True, track: bool = True,
                 stop: threading.Event | None = None) -> RunFolder:
        assert not progress  # one progress bar per run would interleave
        with self.lock:
            self.started.append(cfg.name)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            folder = RunFolder(cfg.out_dir)
            with folder.lock():  # each run holds its own folder's lock
                folder.write_config(cfg)
                if cfg.train.lr == self.interrupt_lr:
                    os.kill(os.getpid(), signal.SIGINT)
                if stop is not None and stop.wait(self.delays[cfg.train.lr]):
                    self.stopped.append(cfg.name)
                    raise KeyboardInterrupt
                (folder.path / "summary.json").write_text(
                    f'{{"name": "{cfg.name}", "final": {{"eval_loss": {cfg.train.lr * 100}}}}}')
            return folder
        finally:
            with self.lock:
                self.running -= 1


def _results(out) -> tuple[list[dict[str, str]], str]:
    rows = list(csv.DictReader((out / "results.csv").open()))
    for row in rows:
        row["run_dir"] = row["run_dir"].removeprefix(str(out))
    return rows, (out / "results.md").read_text()


def test_parallel_runs_overlap_and_write_what_a_sequential_sweep_writes(tmp_path, monkeypatch):
    # Prepare: three runs; the first is the slowest, so the runs end out of order
    lrs = [0.01, 0.02, 0.03]
    fake = ConcurrentRuns({0.01: 0.6, 0.02: 0.1, 0.03: 0.1})
    monkeypatch.setattr(runner, "run_experiment", fake)
    sweep = str(lr_sweep(tmp_path, lrs))
    # Execute: the sweep sequentially, then two at a time, then again two at a time (resume)
    assert main(["sweep", sweep, "--out", str(tmp_path / "seq"), "--no-progress"]) == 0
    fake.most = 0
    assert main(["sweep", sweep, "--out", str(tmp_path / "par"), "--parallel", "2"]) == 0
    parallel, most, fake.started = _results(tmp_path / "par"), fake.most, []
    assert main(["sweep", sweep, "--out", str(tmp_path / "par"), "--parallel", "2"]) == 0
    # Assert: two ran at once; the same folders, rows (in the sweep's order) and table; the
    # rerun reused every run
    assert most == 2
    assert parallel == _results(tmp_path / "seq")
    assert sorted(p.name for p in (tmp_path / "par").glob("lr*")) == \
        sorted(p.name for p in (tmp_path / "seq").glob("lr*"))
    rows, _ = _results(tmp_path / "par")
    assert [r["status"] for r in rows] == ["reused"] * 3 and fake.started == []


def test_an_interrupt_stops_the_running_runs_and_starts_no_more(tmp_path, monkeypatch, capsys):
    # Prepare: the second run presses Ctrl-C while the first still runs; a third waits
    fake = ConcurrentRuns({0.01: 30.0, 0.02: 30.0, 0.03: 0.1}, interrupt_lr=0.02)
    monkeypatch.setattr(runner, "run_experiment", fake)
    out = tmp_path / "out"
    # Execute
    began = time.monotonic()
    code = main(["sweep", str(lr_sweep(tmp_path, [0.01, 0.02, 0.03])), "--out", str(out),
                 "--parallel", "2"])
    # Assert: both running runs were stopped at once, the third never started
    assert code == 130 and time.monotonic() - began < 10
    assert sorted(fake.stopped) == ["t-lr0-seed0", "t-lr1-seed0"]
    assert "t-lr2-seed0" not in fake.started
    assert "--out" in capsys.readouterr().out  # how to go on


class InterruptedHandout(ThreadPoolExecutor):
    """A pool that presses Ctrl-C right after handing out the sweep's second run, while the
    sweep is still handing runs out."""

    def submit(self, fn, /, *args, **kwargs):
        future = super().submit(fn, *args, **kwargs)
        self.handed = getattr(self, "handed", 0) + 1
        if self.handed == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return future


def test_an_interrupt_while_runs_are_handed_out_stops_the_started_ones(tmp_path, monkeypatch):
    # Prepare: three long runs, two at a time; Ctrl-C comes as the second is handed out
    fake = ConcurrentRuns({0.01: 30.0, 0.02: 30.0, 0.03: 30.0})
    monkeypatch.setattr(runner, "run_experiment", fake)
    monkeypatch.setattr(sweep_module, "ThreadPoolExecutor", InterruptedHandout)
    # Execute
    began = time.monotonic()
    code = main(["sweep", str(lr_sweep(tmp_path, [0.01, 0.02, 0.03])), "--out",
                 str(tmp_path / "out"), "--parallel", "2"])
    # Assert: the sweep stopped at once; no run went on to its end, the third never started
    assert code == 130 and time.monotonic() - began < 10
    assert "t-lr2-seed0" not in fake.started
    assert not list((tmp_path / "out").glob("*/summary.json"))


def test_parallel_must_be_positive(tmp_path, capsys):
    code = main(["sweep", str(lr_sweep(tmp_path, [0.01])), "--out", str(tmp_path / "o"),
                 "--parallel", "0"])
    assert code == 2
    assert "--parallel: must be >= 1, or 0 with --ray (got 0)" in capsys.readouterr().out
