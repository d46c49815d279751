"""Submit a config to a running deployment and report its real outcome (`fedprivacy submit`).

A deployment is Flower's own: a SuperLink (``flower-superlink``, TLS and SuperNode
authentication as `docs/DEPLOYMENT.md` shows) and SuperNodes (``flower-supernode``) that hold
the private data. `submit_run` checks the config as ``fedprivacy run`` does, except the
clients' data when the nodes hold it (node-local data); writes the Flower app with the
resolved config; submits it with ``flwr run --stream`` through a private ``FLWR_HOME`` whose
connection names the SuperLink; and then asks the SuperLink for the run's status
(``flwr list --run-id``), because ``flwr run`` exits 0 even when the ServerApp failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fedprivacy.config import ConfigError, ExperimentConfig
from fedprivacy.simulations.runner import console_script, last_error, write_app

CONNECTION = "fedprivacy-deploy"
COMPLETED = "finished:completed"
_STARTED = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class Submitted:
    """A submitted run: its id, Flower's final status, and why it failed (``error``)."""

    run_id: int | None
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED and self.error is None


def connection_toml(superlink: str, root_certificates: str | None, insecure: bool) -> str:
    """The ``config.toml`` of a private ``FLWR_HOME`` whose default connection is the
    SuperLink at ``superlink`` (TLS with the CA ``root_certificates``, or ``insecure``)."""
    if not re.fullmatch(r"[^\s:]+:\d+", superlink):
        raise ConfigError(f"--superlink: expected HOST:PORT (got {superlink!r})")
    if insecure == bool(root_certificates):
        raise ConfigError("--root-certificates CA.crt (TLS) or --insecure: give exactly one")
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{superlink}"']
    if insecure:
        lines.append("insecure = true")
    else:
        ca = Path(root_certificates).expanduser().resolve()  # type: ignore[arg-type]
        if not ca.is_file():
            raise ConfigError(f"--root-certificates: file not found: {ca}")
        lines.append(f"root-certificates = {json.dumps(str(ca))}")
    return "\n".join(lines) + "\n"


def run_status(env: dict[str, str], run_id: int) -> tuple[str, str]:
    """(status, details) of run ``run_id`` as the SuperLink reports it."""
    out = subprocess.run([console_script("flwr"), "list", "--run-id", str(run_id), "--format",
                          "json"], env=env, capture_output=True, text=True, timeout=120)
    try:
        run = json.loads(out.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", " ".join((out.stdout + out.stderr).split())[-300:]
    return str(run.get("status", "unknown")), str(run.get("status-details", ""))


def submit_run(cfg: ExperimentConfig, superlink: str, root_certificates: str | None = None,
               insecure: bool = False, echo: bool = True) -> Submitted:
    """Check ``cfg``, submit it to the SuperLink at ``superlink`` and wait for its end; the
    ServerApp's log is streamed to stdout (``echo``). The run folder is ``cfg.out_dir`` on the
    SuperLink's host (made absolute there when relative)."""
    from fedprivacy.simulations.preflight import preflight

    toml = connection_toml(superlink, root_certificates, insecure)
    preflight(cfg, deployment=True)
    with tempfile.TemporaryDirectory(prefix="fedprivacy-submit-") as tmp:
        home, app = Path(tmp) / "flwr-home", Path(tmp) / "app"
        home.mkdir()
        (home / "config.toml").write_text(toml)
        write_app(app, cfg)
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
        tail: deque[str] = deque(maxlen=5000)
        run_id = None
        with subprocess.Popen([console_script("flwr"), "run", str(app), CONNECTION, "--stream"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                tail.append(line)
                if run_id is None and (found := _STARTED.search(line)):
                    run_id = int(found.group(1))
        log = "".join(tail)
        if run_id is None:
            return Submitted(None, "not started", last_error(log) or
                             f"flwr run exited with code {proc.returncode} before a run started")
        status, details = run_status(env, run_id)
    error = None
    if status != COMPLETED:
        error = last_error(log) or f"the run ended as {status} ({details})"
    return Submitted(run_id, status, error)
