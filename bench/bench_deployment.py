"""A deployment round on loopback against the same round in simulation.

Starts a SuperLink and two SuperNodes on 127.0.0.1 (insecure: TLS is not what is measured)
with Flower's CLIs, submits a tiny run with `fedprivacy submit`'s code path, once with a
separate evaluate message per round and once with `strategy.evaluate_with_train`, and runs the
same config as a simulation. Reports each run's per-round wall time (median, min-max over its
rounds) and a ClientApp process start (median of fresh interpreters importing it). The issue's
goal: a deployment round within 2x of (simulation round + one ClientApp start).

    python bench/bench_deployment.py --rounds 4 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import print_and_record  # noqa: E402

from fedprivacy.config import load_config  # noqa: E402
from fedprivacy.simulations.deploy import submit_run  # noqa: E402
from fedprivacy.simulations.runner import free_port, run_experiment  # noqa: E402
from fedprivacy.simulations.watchdog import RUN_TOKEN, kill_tagged  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ["train.steps=5", "data.train_per_client=16", "data.val_per_client=8",
        "simulation.num_clients=2", "strategy.min_clients=2"]


def clientapp_start(repeats: int) -> list[float]:
    """Wall seconds of fresh interpreters that import the ClientApp."""
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import fedprivacy.clients.client_app"],
                       check=True)
        out.append(time.perf_counter() - started)
    return out


def round_seconds(folder: Path) -> list[float]:
    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["durations"]["round_s"] for r in rounds if r["round"] > 0]


def start_deployment(work: Path, token: str) -> str:
    """An insecure SuperLink and two SuperNodes (partitions 0, 1); returns its address."""
    port = free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", RUN_TOKEN: token,
           "FLWR_HOME": str(work / "flwr-home"),
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    log = (work / "deployment.log").open("wb")
    subprocess.Popen([BIN / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port",
                      str(port), "--disable-runtime-dependency-installation"],
                     env=env, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(5)
    for i in range(2):
        subprocess.Popen([BIN / "flower-supernode", "--insecure", "--superlink",
                          f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config",
                          f"partition-id={i} num-partitions=2"],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(15)  # register and activate (about 6 s idle)
    return f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--starts", type=int, default=5, help="ClientApp starts timed")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    overrides = TINY + [f"rounds={args.rounds}"]
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="fp-bench-deploy-") as tmp:
        work = Path(tmp)
        starts = clientapp_start(args.starts)
        times: dict[str, list[float]] = {}
        sim = run_experiment(load_config(None, overrides + [f"out_dir={work / 'sim'}"]),
                             progress=False, track=False)
        times["simulation"] = round_seconds(sim.path)
        try:
            address = start_deployment(work, token)
            for name, extra in (("deployment", []),
                                ("deployment, evaluate_with_train",
                                 ["strategy.evaluate_with_train=true"])):
                out = work / name.replace(", ", "-")
                done = submit_run(load_config(None, overrides + extra + [f"out_dir={out}"]),
                                  address, insecure=True, echo=False)
                if not done.ok:
                    raise SystemExit(f"{name}: {done.status}: {done.error}")
                times[name] = round_seconds(out)
        finally:
            kill_tagged(token)
    start = statistics.median(starts)
    sim_round = statistics.median(times["simulation"])
    lines = ["| run | round wall s, median (min-max) | / (simulation round + ClientApp start) |",
             "|---|---|---|"]
    for name, values in times.items():
        med = statistics.median(values)
        ratio = "" if name == "simulation" else f"{med / (sim_round + start):.2f}"
        lines.append(f"| {name} | {med:.1f} ({min(values):.1f}-{max(values):.1f}) | {ratio} |")
    lines.append(f"\nClientApp start (fresh interpreter importing it), median of {len(starts)}: "
                 f"{start:.1f} s ({min(starts):.1f}-{max(starts):.1f}); {args.rounds} rounds "
                 f"of 2 clients, tiny-llama, 5 steps.")
    print_and_record("Deployment round on loopback against simulation "
                     "(bench/bench_deployment.py)", "\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
