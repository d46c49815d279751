"""Import time of the ClientApp before and after lazy per-pipeline imports.

A deployment starts a ClientApp process per message, so its import time is part of every
round. This bench imports the ClientApp module in a fresh interpreter, interleaving the
current tree and a reference commit (default: the last commit before the method registry,
whose ClientApp imported Opacus and the attribution engine for every pipeline), and reports
the median with its min-max, and which heavy modules each import pulled in.

    python bench/bench_client_import.py --repeats 5 --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from record import append_result

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("opacus", "captum", "fedprivacy.attribution", "fedprivacy.privacy.dp", "matplotlib",
         "datasets")
PROBE = """
import json, sys, time
t = time.perf_counter()
import {module}
print(json.dumps({{"seconds": time.perf_counter() - t,
                  "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(path: Path, module: str) -> dict:
    """One fresh interpreter importing ``module`` with ``path`` first on sys.path."""
    code = PROBE.format(module=module, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], cwd=path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="efa54e2", help="commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "reference"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.reference],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            arms = {f"reference {args.reference} (clients.client_app)": (old, "clients.client_app"),
                    "this tree (fedprivacy.clients.client_app)":
                        (ROOT, "fedprivacy.clients.client_app")}
            runs: dict[str, list[dict]] = {arm: [] for arm in arms}
            for _ in range(args.repeats):
                for arm, (path, module) in arms.items():
                    runs[arm].append(measure(path, module))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           check=True, capture_output=True)
    lines = [f"ClientApp module import in a fresh interpreter, {args.repeats} interleaved runs "
             "(SFT-only: nothing of the pipeline is imported until a message names it):", "",
             "| tree | median s | min-max s | heavy modules imported |", "|---|---:|---:|---|"]
    for arm, results in runs.items():
        seconds = [r["seconds"] for r in results]
        heavy = ", ".join(results[-1]["heavy"]) or "none"
        lines.append(f"| {arm} | {statistics.median(seconds):.2f} | "
                     f"{min(seconds):.2f}-{max(seconds):.2f} | {heavy} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_result("ClientApp import time (bench/bench_client_import.py)", table)


if __name__ == "__main__":
    main()
