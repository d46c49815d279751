"""A deployment starts a ClientApp process per message: importing it must not pull in what
only some pipelines need (each costs seconds of every start)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ONLY_SOME_NEED = ("scipy.stats", "opacus", "captum", "peft", "mlflow", "matplotlib", "ray",
                  "pandas", "datasets")


def test_the_clientapp_imports_no_module_only_some_pipelines_need():
    code = ("import sys, fedprivacy.clients.client_app; "
            f"print(','.join(m for m in {ONLY_SOME_NEED!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == ""
