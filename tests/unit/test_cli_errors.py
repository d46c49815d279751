"""What the CLI says when a run fails or is interrupted: one line, the real cause and path."""

import pytest

from fedprivacy.simulations import runner
from fedprivacy.simulations.cli import main
from fedprivacy.simulations.runner import failure_message, last_error

pytestmark = pytest.mark.unit

FLOWER_LOG = """\
\x1b[92mINFO \x1b[0m:      Starting Flower Simulation
\x1b[91mERROR \x1b[0m:     Simulation raised an exception
Traceback (most recent call last):
  File "/x/flwr/simulation/app.py", line 337, in run_simulation_process
    simulation_result = _run_simulation(
                        ^^^^^^^^^^^^^^^^
  File "/x/fedprivacy/models.py", line 12, in resolve_device
    raise RuntimeError("train.device: cuda is not available")
RuntimeError: train.device: cuda is not available
\x1b[91mERROR \x1b[0m:     Exit Code: 700

An unhandled exception occurred when running the simulation.
\x1b[92mINFO \x1b[0m:      SuperExec terminated gracefully.
"""


def test_last_error_is_the_exception_closing_the_last_traceback():
    # Execute / Assert
    assert last_error(FLOWER_LOG) == "RuntimeError: train.device: cuda is not available"
    assert last_error("\x1b[91mERROR \x1b[0m:     Exit Code: 700\n") == "Exit Code: 700"
    assert last_error("INFO : all fine\n") is None


def test_failure_message_quotes_the_serverapp_error(tmp_path):
    # Prepare
    log = tmp_path / "flower.log"
    log.write_text(FLOWER_LOG)
    # Execute
    message = failure_message(0, log)
    # Assert
    assert message.startswith("the ServerApp failed: RuntimeError: train.device: cuda")
    assert "exit code 0" not in message and str(log) in message


def _run_raising(monkeypatch, error: BaseException) -> None:
    def run_experiment(cfg, progress=True):
        raise error

    monkeypatch.setattr(runner, "run_experiment", run_experiment)


def test_any_error_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    # Prepare
    _run_raising(monkeypatch, PermissionError(13, "Permission denied",
                                              str(tmp_path / "metrics.jsonl")))
    # Execute
    code = main(["run", "rounds=1", "--out", str(tmp_path / "run"), "--no-progress"])
    # Assert
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.strip().splitlines() == [
        f"error: PermissionError: [Errno 13] Permission denied: '{tmp_path}/metrics.jsonl'"]
    assert "Traceback" not in captured.out + captured.err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    # Prepare
    _run_raising(monkeypatch, KeyError("train.nope"))
    # Execute / Assert
    with pytest.raises(KeyError, match="train.nope"):
        main(["run", "rounds=1", "--out", str(tmp_path), "--no-progress", "--debug"])


def test_interrupt_names_the_real_folder_to_resume(tmp_path, monkeypatch, capsys):
    # Prepare: a relative --out; the run was interrupted after it wrote its config
    monkeypatch.chdir(tmp_path)

    def interrupted(cfg, progress=True):
        (tmp_path / "myrun").mkdir()
        (tmp_path / "myrun" / "config.yaml").write_text("name: x\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    # Execute
    code = main(["run", "rounds=1", "--out", "myrun", "--no-progress"])
    # Assert
    assert code == 130
    assert (f"interrupted: resume with fedprivacy run --resume {tmp_path / 'myrun'}"
            in capsys.readouterr().out)


def test_overrides_may_follow_the_options(capsys):
    # Execute: an override after an option, as `fedprivacy run cfg.yaml --no-progress k=v`
    code = main(["config", "--toml", "rounds=7"])
    # Assert
    assert code == 0 and "rounds = 7" in capsys.readouterr().out


def test_a_stray_argument_after_the_options_is_named(capsys):
    # Execute / Assert: a word that is no override is refused as before, by name
    with pytest.raises(SystemExit) as exit_:
        main(["config", "rounds=7", "--toml", "bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: bogus" in capsys.readouterr().err
