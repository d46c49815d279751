"""Bytes on the wire and round time: SmolLM2-135M full weights against a LoRA adapter.

One round as the project runs it, in one process (no Ray, no gRPC): the server packs the
global arrays (`fedprivacy.adapters.wire_state`), every client handles its train message with
the real ClientApp (copy of the base, arrays loaded, ``train.steps`` SFT steps, reply packed),
FedAvg aggregates the replies and the server loads the result. Bytes are the reply metrics
``bytes_down``/``bytes_up`` the clients report (per client per round). The arms alternate in
every repeat (interleaved); the table gives the median and the min–max.

    python bench/bench_lora.py                  # about 5 minutes on 2 CPU cores
    python bench/bench_lora.py --write          # also append the table to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from record import print_and_record

from fedprivacy import adapters
from fedprivacy.clients import client_app
from fedprivacy.config import ExperimentConfig, flatten, load_config
from fedprivacy.models import smollm2_config
from fedprivacy.strategies.server_app import GlobalModel

ARMS = {"full weights": ["model.adapter=none"], "LoRA r=8": ["model.adapter=lora",
                                                             "model.lora_r=8"]}


class Arm:
    """One arm's server model and client contexts (built once, outside the timing)."""

    def __init__(self, overrides: list[str], args: argparse.Namespace) -> None:
        mc = smollm2_config()
        self.cfg: ExperimentConfig = load_config(None, [
            "model.preset=", f"model.name_or_path={mc.name_or_path}",
            f"model.gguf_file={mc.gguf_file}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}", f"data.max_length={args.seq_len}",
            "data.train_per_client=16", "data.val_per_client=4",
            f"simulation.num_clients={args.clients}", "strategy.min_clients=1",
            "train.device=cpu", *overrides])
        self.server = GlobalModel(self.cfg)
        self.contexts = [Context(run_id=1, node_id=i + 1, state=RecordDict(),
                                 node_config={"partition-id": i, "num-partitions": args.clients},
                                 run_config=flatten(self.cfg)) for i in range(args.clients)]
        self.strategy = FedAvg(min_available_nodes=1)

    def round(self, server_round: int) -> tuple[float, dict[str, float]]:
        """Seconds of one round, and one client's bytes down and up."""
        started = time.perf_counter()
        arrays = ArrayRecord(adapters.wire_state(self.server.model))
        replies = []
        for node, context in enumerate(self.contexts, start=1):
            content = RecordDict({"arrays": arrays, "config": ConfigRecord(
                {"server-round": server_round})})
            msg = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
            msg.metadata.__dict__["_message_id"] = f"r{server_round}n{node}"
            replies.append(client_app.train(msg, context))
        aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        self.server.load(aggregated)
        seconds = time.perf_counter() - started
        metrics = replies[0].content["metrics"]
        return seconds, {"down": metrics["bytes_down"], "up": metrics["bytes_up"]}


def markdown(args: argparse.Namespace, times: dict[str, list[float]],
             sizes: dict[str, dict[str, float]], params: int) -> str:
    lines = [f"SmolLM2-135M-Instruct ({params:,} parameters, float32), {args.clients} clients "
             f"in one process, {args.steps} SFT steps of batch {args.batch_size} x "
             f"{args.seq_len} tokens per client, {args.repeats} interleaved repeats (median, "
             f"min–max) after one warm-up round per arm, torch threads "
             f"{torch.get_num_threads()}:", "",
             "| arm | MB down / client / round | MB up / client / round | round s (median) | "
             "round s (min–max) |", "|---|---:|---:|---:|---:|"]
    for arm, seconds in times.items():
        lines.append(f"| {arm} | {sizes[arm]['down'] / 1e6:.2f} | {sizes[arm]['up'] / 1e6:.2f} "
                     f"| {statistics.median(seconds):.2f} | {min(seconds):.2f}–"
                     f"{max(seconds):.2f} |")
    full, lora = (statistics.median(times[a]) for a in ARMS)
    share = sizes["LoRA r=8"]["up"] / sizes["full weights"]["up"]
    lines.append(f"| LoRA / full | {share:.2%} | {share:.2%} | {full / lora:.1f}x faster | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="SFT steps per client per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arms = {name: Arm(overrides, args) for name, overrides in ARMS.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    sizes: dict[str, dict[str, float]] = {}
    for arm in arms.values():
        arm.round(1)  # warm-up: the clients' data, tokenizer and base model are cached
    for repeat in range(args.repeats):
        for name, arm in arms.items():
            seconds, sizes[name] = arm.round(repeat + 2)
            times[name].append(seconds)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {seconds:.2f} s", flush=True)
    params = sum(p.numel() for p in arms["full weights"].server.model.parameters())
    print_and_record("LoRA adapters: bytes and round time", markdown(args, times, sizes, params),
                     args.write)


if __name__ == "__main__":
    main()
