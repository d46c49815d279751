"""Append a benchmark run to BENCHMARKS.md under its own section, with the command that made it."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def append_result(section: str, table: str, path: Path = BENCHMARKS) -> None:
    """Add one dated entry (command, machine, load, table) at the end of ``## section``."""
    script = Path(sys.argv[0]).resolve().relative_to(BENCHMARKS.parent)
    command = shlex.join(["python", str(script), *sys.argv[1:]])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    entry = (f"\n### {stamp}\n\n`{command}`\n\n{platform.machine()}, {os.cpu_count()} CPUs, "
             f"load average {load}, torch {torch.__version__}\n\n{table}\n")
    heading = f"## {section}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n"
    head, _, rest = text.partition(heading)
    nxt = rest.find("\n## ")
    body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
    path.write_text(head + heading + body.rstrip("\n") + "\n" + entry + tail)
    print(f"\nappended to {path}")


def print_and_record(section: str, table: str, write: bool, path: Path = BENCHMARKS) -> None:
    """A bench's last step: print its table and, with ``--write``, append it to its section."""
    print(table)
    if write:
        append_result(section.removeprefix("## "), table, path)
