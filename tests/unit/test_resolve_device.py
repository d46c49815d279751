"""`train.device` is resolved against the visible devices, naming the key when it cannot be."""

from __future__ import annotations

import pytest
import torch

from fedprivacy.models import ModelLoadError, resolve_device

pytestmark = pytest.mark.unit


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Pretend ``count`` CUDA devices are visible (0: none), on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_names_the_key(monkeypatch, name):
    # Prepare
    _gpus(monkeypatch, 0)
    # Execute
    with pytest.raises(ModelLoadError) as error:
        resolve_device(name)
    # Assert
    assert f"train.device={name!r}" in str(error.value) and "no CUDA device" in str(error.value)


def test_a_cuda_index_past_the_visible_devices_names_the_key(monkeypatch):
    # Prepare
    _gpus(monkeypatch, 2)
    # Execute
    with pytest.raises(ModelLoadError) as error:
        resolve_device("cuda:2")
    # Assert
    assert "train.device='cuda:2'" in str(error.value) and "only 2 CUDA" in str(error.value)


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x"])
def test_an_unknown_device_names_the_key(monkeypatch, name):
    # Prepare
    _gpus(monkeypatch, 1)
    # Execute
    with pytest.raises(ModelLoadError) as error:
        resolve_device(name)
    # Assert
    assert str(error.value).startswith(f"train.device={name!r}")


@pytest.mark.parametrize("name, count, expected", [
    ("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 1, "cpu"), ("cuda:1", 2, "cuda:1"),
])
def test_valid_devices_resolve(monkeypatch, name, count, expected):
    # Prepare
    _gpus(monkeypatch, count)
    # Execute / Assert
    assert resolve_device(name) == torch.device(expected)
