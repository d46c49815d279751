"""Per-round overhead of fedprivacy's simulation against a plain Flower FedAvg app.

Both run the same local work (model, data, local SFT, client evaluation, central evaluation;
see bench/plain_app.py) through the same `flwr run` path on a private simulation SuperLink, in
the same invocation, for each number of virtual clients. Reported: the mean wall time of the
warm rounds (round 1 includes Ray's start and is left out), their ratio (goal <= 1.1) and the
peak RSS summed over the whole process tree.

    python bench/bench_overhead.py --clients 4 20 100 --write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import append_result  # noqa: E402

from fedprivacy.config import load_config  # noqa: E402
from fedprivacy.simulations.runner import run_experiment, submit, write_app  # noqa: E402


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def warm_rounds(ends: list[float]) -> list[float]:
    """Durations of rounds 2.. from the end times of rounds 0..R."""
    return [b - a for a, b in zip(ends[1:], ends[2:])]


def run_ours(overrides: list[str], work: Path) -> tuple[list[float], int]:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides + [f"out_dir={work / 'ours'}"])
    with PeakRSS() as rss:
        folder = run_experiment(cfg, progress=False)
    return warm_rounds([r["time"] for r in folder.rounds()]), rss.peak


def run_plain(overrides: list[str], work: Path) -> tuple[list[float], int]:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    app = work / "plain-app"
    write_app(app, cfg, ("plain_app:server", "plain_app:client"))
    shutil.copy(ROOT / "bench" / "plain_app.py", app / "plain_app.py")
    timing = work / "plain-times.json"
    os.environ["FEDPRIVACY_TIMING_FILE"] = str(timing)
    with PeakRSS() as rss:
        code = submit(app, cfg, work / "plain.log")
    if code != 0 or not timing.is_file():
        raise RuntimeError(f"plain app failed (exit {code}); see {work / 'plain.log'}")
    return warm_rounds(json.loads(timing.read_text())), rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 20, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="local SFT steps per client")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for n in args.clients:
        overrides = [f"simulation.num_clients={n}", f"strategy.min_clients={n}",
                     f"rounds={args.rounds}", f"train.steps={args.steps}",
                     "data.train_per_client=16", "data.val_per_client=8", "train.batch_size=8"]
        work = Path(tempfile.mkdtemp(prefix=f"bench-overhead-{n}-"))
        plain, plain_rss = run_plain(overrides, work)
        ours, ours_rss = run_ours(overrides, work)
        p, o = statistics.fmean(plain), statistics.fmean(ours)
        rows.append(f"| {n} | {p:.2f} | {o:.2f} | {o / p:.2f} | {plain_rss / 2**30:.2f} | "
                    f"{ours_rss / 2**30:.2f} |")
        print(rows[-1], flush=True)
        shutil.rmtree(work, ignore_errors=True)
    table = ("| clients | plain FedAvg warm round (s) | fedprivacy warm round (s) | ratio | "
             "plain peak RSS (GiB) | fedprivacy peak RSS (GiB) |\n|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    print(table)
    if args.write:
        append_result("Simulation overhead against plain Flower FedAvg (bench/bench_overhead.py)",
                      f"{args.rounds} rounds, {args.steps} local steps; warm rounds 2..R\n\n{table}")


if __name__ == "__main__":
    main()
