"""A sweep survives a crashed run and reuses a finished run only for the same config
(`run_experiment` stands in for the simulation: it writes what a finished run leaves)."""

import csv

import pytest

from fedprivacy.config import ExperimentConfig
from fedprivacy.report import RunFolder
from fedprivacy.simulations import runner
from fedprivacy.simulations.cli import main
from tests.tiny import lr_sweep

pytestmark = pytest.mark.unit


class FakeRuns:
    """Records each run it is asked to do; a run whose lr is ``crash_lr`` raises OSError."""

    def __init__(self, crash_lr: float | None = None) -> None:
        self.crash_lr, self.done = crash_lr, []

    def __call__(self, cfg: ExperimentConfig, progress: bool = True,
                 track: bool = True) -> RunFolder:
        self.done.append((cfg.name, cfg.train.lr))
        folder = RunFolder(cfg.out_dir)
        folder.write_config(cfg)
        if cfg.train.lr == self.crash_lr:
            raise OSError(28, "No space left on device", f"{cfg.out_dir}/metrics.jsonl")
        (folder.path / "summary.json").write_text(
            f'{{"name": "{cfg.name}", "final": {{"eval_loss": {cfg.train.lr * 100}}}}}')
        return folder


def _rows(out):
    return list(csv.DictReader((out / "results.csv").open()))


def test_a_crashed_run_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    # Prepare: the second of three runs crashes
    fake = FakeRuns(crash_lr=0.02)
    monkeypatch.setattr(runner, "run_experiment", fake)
    out = tmp_path / "out"
    # Execute
    code = main(["sweep", str(lr_sweep(tmp_path, [0.01, 0.02, 0.03])), "--out", str(out),
                 "--no-progress"])
    # Assert: all three ran; the crash is in both tables; the exit code says so
    assert code == 1 and len(fake.done) == 3
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    assert "No space left on device" in rows[1]["error"]
    assert f"{out}/lr1-seed0/metrics.jsonl" in rows[1]["error"]
    assert float(rows[2]["final.eval_loss"]) == pytest.approx(3.0)
    table = (out / "results.md").read_text()
    assert "Failed runs" in table and "| lr1 | 0 | OSError: [Errno 28] No space left" in table
    assert "1 of 3 runs failed" in " ".join(capsys.readouterr().out.split())


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path, monkeypatch):
    # Prepare: a finished two-run sweep
    fake = FakeRuns()
    monkeypatch.setattr(runner, "run_experiment", fake)
    out = tmp_path / "out"
    assert main(["sweep", str(lr_sweep(tmp_path, [0.01, 0.02])), "--out", str(out),
                 "--no-progress"]) == 0
    fake.done.clear()
    # Execute: the same sweep with the second run's lr changed, on the same folder
    code = main(["sweep", str(lr_sweep(tmp_path, [0.01, 0.003])), "--out", str(out),
                 "--no-progress"])
    # Assert: only the changed run ran again; the table reports what it was trained with
    assert code == 0
    assert fake.done == [("t-lr1-seed0", 0.003)]
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["reused", "finished"]
    assert float(rows[1]["final.eval_loss"]) == pytest.approx(0.3)
    assert [p.name for p in out.glob("lr1-seed0.replaced-*")]  # the old run is kept aside
