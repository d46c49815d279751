"""`fedprivacy submit`: the connection to the SuperLink is checked before anything is sent."""

import pytest

from fedprivacy.config import ConfigError
from fedprivacy.simulations.deploy import COMPLETED, Submitted, connection_toml

pytestmark = pytest.mark.unit


def test_a_tls_connection_names_the_ca_by_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.chdir(tmp_path)
    toml = connection_toml("10.0.0.5:9092", "ca.crt", insecure=False)
    assert 'address = "10.0.0.5:9092"' in toml
    assert f'root-certificates = "{tmp_path / "ca.crt"}"' in toml and "insecure" not in toml


@pytest.mark.parametrize(("superlink", "ca", "insecure", "message"), [
    ("10.0.0.5", None, True, r"^--superlink: expected HOST:PORT"),
    ("10.0.0.5:9092", None, False, r"^--root-certificates CA.crt \(TLS\) or --insecure"),
    ("10.0.0.5:9092", "ca.crt", True, r"^--root-certificates CA.crt \(TLS\) or --insecure"),
    ("10.0.0.5:9092", "/nowhere/ca.crt", False, r"^--root-certificates: file not found"),
])
def test_a_bad_connection_is_refused_naming_the_flag(superlink, ca, insecure, message):
    with pytest.raises(ConfigError, match=message):
        connection_toml(superlink, ca, insecure)


def test_only_a_completed_run_without_an_error_is_ok():
    assert Submitted(1, COMPLETED).ok
    assert not Submitted(1, "finished:failed", "ValueError: boom").ok
    assert not Submitted(None, "not started", "no SuperLink").ok
