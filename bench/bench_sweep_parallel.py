"""Wall time of a small sweep run one run after another against ``--parallel N``.

The sweep: ``--runs`` tiny runs (1 round, 2 clients, 3 steps; variants differ in ``train.lr``),
each a full simulation (own SuperLink, own Ray). Repeats are interleaved and alternate which
mode goes first; every pair is also checked for equal results (apart from timings).

    python bench/bench_sweep_parallel.py --runs 2 --parallel 2 --repeats 3 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import print_and_record  # noqa: E402

from fedprivacy.simulations.sweep import load_sweep, run_sweep  # noqa: E402

BASE = ("name: tiny\nrounds: 1\ntrain: {steps: 3}\nsimulation: {num_clients: 2}\n"
        "data: {train_per_client: 8, val_per_client: 8}\n")


def _sweep_file(work: Path, runs: int) -> Path:
    (work / "base.yaml").write_text(BASE)
    variants = "".join(f"  - {{name: lr{i}, overrides: [train.lr={0.001 / (i + 1)}]}}\n"
                       for i in range(runs))
    path = work / "sweep.yaml"
    path.write_text(f"base: base.yaml\nname: bench\nruns:\n{variants}"
                    "metrics: [final.eval_loss]\n")
    return path


def _timed(sweep_file: Path, out: Path, parallel: int) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    outcome = run_sweep(load_sweep(sweep_file), out, progress=False, parallel=parallel)
    wall = time.perf_counter() - began
    if outcome.failed:
        raise SystemExit(f"a run failed: {outcome.failed}")
    return wall, [{k: v for k, v in r.items() if k not in ("run_dir", "wall_s")}
                  for r in outcome.rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    sweep_file = _sweep_file(work, args.runs)
    walls: dict[int, list[float]] = {1: [], args.parallel: []}
    loads = []
    for repeat in range(args.repeats):
        order = [1, args.parallel] if repeat % 2 == 0 else [args.parallel, 1]
        results = {}
        for parallel in order:
            loads.append(os.getloadavg()[0])
            wall, results[parallel] = _timed(sweep_file, work / f"r{repeat}-p{parallel}",
                                             parallel)
            walls[parallel].append(wall)
            print(f"repeat {repeat}: --parallel {parallel}: {wall:.1f} s", flush=True)
        if results[1] != results[args.parallel]:
            raise SystemExit(f"results differ: {results}")
    seq, par = walls[1], walls[args.parallel]
    lines = ["| mode | sweep wall (s), each repeat | mean | per run |",
             "|---|---|---|---|"]
    for name, values in ((f"sequential ({args.runs} runs)", seq),
                         (f"--parallel {args.parallel}", par)):
        mean = statistics.fmean(values)
        lines.append(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {mean:.1f} | "
                     f"{mean / args.runs:.1f} |")
    ratios = [s / q for s, q in zip(seq, par)]
    table = "\n".join(lines) + (
        f"\n\nspeed-up (sequential / parallel, per repeat): "
        f"{' / '.join(f'{r:.2f}' for r in ratios)}, mean {statistics.fmean(ratios):.2f}; "
        f"results equal in every repeat; 1-min load before each sweep "
        f"{min(loads):.1f}–{max(loads):.1f}")
    print_and_record("Parallel sweeps", table, args.write)


if __name__ == "__main__":
    main()
