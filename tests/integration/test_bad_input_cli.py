"""Bad input through the `fedprivacy run` command: a non-zero exit within seconds, a message
naming the key and the file, no run folder and no process left (issue 7, "Bad input")."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch

from fedprivacy.simulations import runner
from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.integration
SMALL = ["model.hidden_size=32", "model.num_layers=2", "simulation.num_clients=2", "rounds=1"]


def _never_submit(*args: object, **kwargs: object) -> int:
    raise AssertionError("bad input must fail in the preflight, before the simulation starts")


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
         overrides: list[str]) -> tuple[int, str, Path]:
    """`fedprivacy run` in-process; returns (exit code, its one-line output, the run folder)."""
    monkeypatch.setattr(runner, "submit", _never_submit)
    out = tmp_path / "run"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main(["run", *SMALL, *overrides, "--out", str(out), "--no-progress"])
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before, "a failed run must leave no process behind"
    return code, " ".join(capsys.readouterr().out.split()), out


def _rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(n)))
    return path


def test_empty_jsonl_names_data_path_and_the_file(tmp_path, monkeypatch, capsys):
    # Prepare
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys,
                           ["data.source=files", f"data.path={data}"])
    # Assert
    assert code != 0
    assert "data.path" in said and str(data) in said and "empty" in said
    assert not out.exists()


def test_binary_file_names_data_path_and_the_format(tmp_path, monkeypatch, capsys):
    # Prepare: bytes that are no UTF-8 text
    data = tmp_path / "binary.jsonl"
    data.write_bytes(bytes(range(256)) * 8)
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys,
                           ["data.source=files", f"data.path={data}"])
    # Assert
    assert code != 0
    assert "data.path" in said and str(data) in said and "not valid JSONL" in said
    assert not out.exists()


def test_too_few_records_name_data_path_and_the_split_sizes(tmp_path, monkeypatch, capsys):
    # Prepare: 4 rows for 2 clients leave each client 2 training and no validation record
    data = _rows(tmp_path / "four.jsonl", 4)
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys,
                           ["data.source=files", f"data.path={data}"])
    # Assert
    assert code != 0
    assert "data.path" in said and str(data) in said and "data.max_length" not in said
    assert "client 0: train=2, validation=0, test=0" in said
    assert "client 1: train=2, validation=0, test=0" in said
    assert not out.exists()


def test_empty_model_folder_names_the_key_the_folder_and_what_is_missing(
        tmp_path, monkeypatch, capsys):
    # Prepare
    folder = tmp_path / "model"
    folder.mkdir()
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys,
                           ["model.preset=", f"model.name_or_path={folder}"])
    # Assert
    assert code != 0
    assert "model.name_or_path" in said and str(folder) in said
    assert "no config.json" in said and "no tokenizer files" in said
    assert not out.exists()


def test_cuda_device_without_a_gpu_fails_in_the_preflight(tmp_path, monkeypatch, capsys):
    # Prepare: no GPU, also on a machine that has one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys, ["train.device=cuda"])
    # Assert
    assert code != 0
    assert "train.device" in said and "no CUDA device" in said
    assert not out.exists()


def test_empty_server_eval_file_names_its_key(tmp_path, monkeypatch, capsys):
    # Prepare
    data = tmp_path / "server.jsonl"
    data.write_text("\n")
    # Execute
    code, said, out = _run(tmp_path, monkeypatch, capsys,
                           ["server.eval_source=file", f"server.eval_path={data}"])
    # Assert
    assert code != 0
    assert "server.eval_path" in said and str(data) in said and "empty" in said
    assert not out.exists()
