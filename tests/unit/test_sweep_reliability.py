"""A sweep survives a crashed run, reuses a finished run only for the same config, and
compares seeds run apart (`run_experiment` stands in for the simulation: it writes what a
finished run leaves)."""

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
            f'{{"name": "{cfg.name}", "final": {{"eval_loss": {cfg.train.lr * 100 + cfg.seed}}}}}')
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


def _two_seeds(tmp_path, lr=0.01):
    path = lr_sweep(tmp_path, [lr])
    path.write_text(path.read_text() + "seeds: [0, 1]\n")
    return path


def test_seeds_run_apart_are_compared_as_one_sweep(tmp_path, monkeypatch):
    # Prepare: seed 0 run on its own (another machine, another day)
    fake = FakeRuns()
    monkeypatch.setattr(runner, "run_experiment", fake)
    sweep = _two_seeds(tmp_path)
    assert main(["sweep", str(sweep), "--seeds", "0", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    # Execute: seed 1 elsewhere, merged with seed 0's results
    code = main(["sweep", str(sweep), "--seeds", "1", "--out", str(tmp_path / "b"),
                 "--merge", str(tmp_path / "a" / "results.csv"), "--no-progress"])
    # Assert: each seed ran once; the table is over both (eval_loss 1 and 2)
    assert code == 0 and fake.done == [("t-lr0-seed0", 0.01), ("t-lr0-seed1", 0.01)]
    rows = _rows(tmp_path / "b")
    assert [(r["seed"], r["merged_from"]) for r in rows] == [
        ("0", str(tmp_path / "a" / "results.csv")), ("1", "")]
    assert "| lr0 | 1.5 ± 0.71 (n=2) |" in (tmp_path / "b" / "results.md").read_text()
    assert not (tmp_path / "b" / "lr0-seed0").exists()


def test_merge_refuses_rows_of_another_sweep_or_a_run_it_makes(tmp_path, monkeypatch, capsys):
    # Prepare: seed 0's results, made with lr 0.01
    monkeypatch.setattr(runner, "run_experiment", FakeRuns())
    assert main(["sweep", str(_two_seeds(tmp_path)), "--seeds", "0", "--out",
                 str(tmp_path / "a"), "--no-progress"]) == 0
    done = str(tmp_path / "a" / "results.csv")
    other = _two_seeds(tmp_path / "a", lr=0.02)
    # Execute / Assert: other overrides, a run this sweep makes, a file given twice, a seed
    # the sweep has not: each names what is wrong
    cases = [([str(other), "--seeds", "1", "--merge", done], "line 2 ('lr0', seed 0): made "
              "with overrides 'train.lr=0.01 seed=0', the sweep file's are 'train.lr=0.02"),
             ([str(_two_seeds(tmp_path)), "--merge", done], "this sweep runs it too"),
             ([str(_two_seeds(tmp_path)), "--seeds", "1", "--merge", done, "--merge", done],
              f"already merged from {done}"),
             ([str(_two_seeds(tmp_path)), "--seeds", "2"], "--seeds: [2] not among the "
              "sweep's seeds [0, 1]")]
    for args, message in cases:
        capsys.readouterr()
        assert main(["sweep", *args, "--out", str(tmp_path / "b"), "--no-progress"]) == 2
        assert message in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "b").exists()
