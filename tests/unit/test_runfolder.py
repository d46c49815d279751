"""The run folder's reliability: a round's checkpoint and record commit as a pair, and a live
run's lock keeps a second run out."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fedprivacy.config import load_config, to_yaml
from fedprivacy.report import RunFolder, RunFolderLocked
from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.unit


def _record(rnd: int) -> dict:
    return {"round": rnd, "server": {"eval_loss": 3.0 - rnd}, "clients": {}, "dropped": []}


def _recorded_rounds(folder: RunFolder) -> list[int]:
    return [json.loads(line)["round"] for line in folder.metrics_path.read_text().splitlines()]


class _Killed(Exception):
    """Stands for a SIGKILL that stops the process at this point."""


def test_round_killed_after_its_checkpoint_keeps_its_record(tmp_path, monkeypatch):
    # Prepare: rounds 0 and 1 committed; round 2 is killed right after its checkpoint
    folder = RunFolder(tmp_path)
    folder.save_round(0, {"w": np.zeros(2, np.float32)}, _record(0))
    folder.save_round(1, {"w": np.ones(2, np.float32)}, _record(1))

    def killed(self: RunFolder, record: dict) -> None:
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "append_round", killed)
        with pytest.raises(_Killed):
            folder.save_round(2, {"w": np.full(2, 2.0, np.float32)}, _record(2))
    assert _recorded_rounds(folder) == [0, 1]  # the crash window: record not yet appended
    # Execute: the resumed run loads the checkpoint (twice, to show it never duplicates)
    resumed = RunFolder(tmp_path)
    done, arrays = resumed.load_checkpoint()
    resumed.load_checkpoint()
    # Assert: round 2's record (and its ε) is back, exactly once, with its checkpoint
    assert done == 2 and np.array_equal(arrays["w"], np.full(2, 2.0, np.float32))
    assert _recorded_rounds(resumed) == [0, 1, 2]
    assert resumed.rounds()[2]["server"]["eval_loss"] == pytest.approx(1.0)


def test_round_zero_is_recorded_without_a_checkpoint(tmp_path):
    # Execute
    folder = RunFolder(tmp_path)
    folder.save_round(0, {"w": np.zeros(2, np.float32)}, _record(0))
    # Assert
    assert folder.load_checkpoint() is None and _recorded_rounds(folder) == [0]


def test_torn_last_line_is_cut_before_the_record_is_appended(tmp_path, monkeypatch):
    # Prepare: round 1 committed to the checkpoint; the kill tore its metrics line in half
    folder = RunFolder(tmp_path)
    folder.save_round(0, {}, _record(0))
    monkeypatch.setattr(RunFolder, "append_round", lambda self, record: None)
    folder.save_round(1, {"w": np.ones(2, np.float32)}, _record(1))
    monkeypatch.undo()
    with folder.metrics_path.open("a") as fh:
        fh.write(json.dumps(_record(1))[:10])
    assert [r["round"] for r in folder.rounds()] == [0]  # a torn last line is skipped
    # Execute
    folder.load_checkpoint()
    # Assert
    assert _recorded_rounds(folder) == [0, 1]


def test_checkpoint_keeps_one_arrays_file(tmp_path):
    # Execute
    folder = RunFolder(tmp_path)
    for rnd in (1, 2, 3):
        folder.save_round(rnd, {"w": np.full(2, float(rnd), np.float32)}, _record(rnd))
    # Assert: the last pair only, no temporary file left
    assert sorted(p.name for p in folder.checkpoint_dir.iterdir()) == [
        "round-000003.safetensors", "state.json"]
    assert json.loads((folder.checkpoint_dir / "state.json").read_text())["record"]["round"] == 3


HOLDER = textwrap.dedent("""
    import sys, time
    from fedprivacy.report import RunFolder
    with RunFolder(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def held_folder(tmp_path):
    """A run folder with a resumable config, locked by another live process."""
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield tmp_path, holder
    holder.kill()
    holder.wait()


def test_lock_held_by_another_process_refuses_naming_folder_and_pid(held_folder):
    # Prepare
    path, holder = held_folder
    # Execute / Assert
    with pytest.raises(RunFolderLocked, match=rf"{path}.*pid {holder.pid}"):
        with RunFolder(path).lock():
            pass
    with pytest.raises(RunFolderLocked):
        RunFolder(path).check_unlocked()


def test_lock_is_free_again_after_its_holder_dies(held_folder):
    # Prepare
    path, holder = held_folder
    holder.kill()  # SIGKILL: no clean-up code runs
    holder.wait()
    # Execute / Assert: the kernel released the flock with the dead process
    with RunFolder(path).lock() as fd:
        assert fd >= 0
    assert (path / ".run.lock").read_text().strip() == str(os.getpid())


def test_resume_on_a_locked_folder_refuses_and_writes_nothing(held_folder, capsys):
    # Prepare
    path, holder = held_folder
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    # Execute
    code = main(["run", "--resume", str(path), "--no-progress"])
    # Assert
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1
    assert f"run folder {path} is in use by a live run (pid {holder.pid}" in out
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_a_torn_round_zero_line_does_not_spoil_the_next_record(tmp_path):
    # Prepare: killed in mid-append of round 0 (no checkpoint exists yet)
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text(json.dumps(_record(0))[:15])
    # Execute: the restarted run records round 0 again, then round 1
    folder.save_round(0, {}, _record(0))
    folder.save_round(1, {"w": np.ones(2, np.float32)}, _record(1))
    # Assert: every line is whole
    assert _recorded_rounds(folder) == [0, 1]
