"""The anchor of bench_overhead.py: a plain Flower FedAvg app doing the same local work.

Same model, data, local training and evaluation functions as fedprivacy's apps, but none of
the framework around them (no reply checks, run records, checkpoints or summaries). It writes
the wall time at the end of each round to the file named by ``FEDPRIVACY_TIMING_FILE``.
"""

from __future__ import annotations

import json
import os
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedprivacy.clients.job import ClientJob
from fedprivacy.config import unflatten
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import build_eval_data
from fedprivacy.evaluation import evaluate_loss, task_accuracy
from fedprivacy.models import build_model, load_tokenizer
from fedprivacy.training import sft

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    job = ClientJob.from_message(msg, context)
    losses = sft(job.model, job.res.train_set, job.cfg.train, job.seed)
    return Message(RecordDict({"arrays": ArrayRecord(job.model.state_dict()),
                               "metrics": MetricRecord({"train_loss": losses[-1],
                                                        "num-examples": len(job.res.data.train)})}),
                   reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = ClientJob.from_message(msg, context)
    loss, _ = evaluate_loss(job.model, job.res.val_set, job.cfg.train.eval_batch_size)
    acc = task_accuracy(job.model, job.res.tokenizer, job.res.data.task, job.res.data.validation,
                        job.cfg.train.eval_batch_size)
    return Message(RecordDict({"metrics": MetricRecord({"eval_loss": loss, "accuracy": acc,
                                                        "num-examples": len(job.res.data.validation)})}),
                   reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = unflatten(dict(context.run_config))
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, cfg.seed)
    eval_set = encode_records(tokenizer, build_eval_data(cfg.data, cfg.simulation.num_clients,
                                                         cfg.seed), cfg.data.max_length,
                              on_overflow="truncate")
    times: list[float] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, _ = evaluate_loss(model, eval_set, cfg.train.eval_batch_size)
        times.append(time.time())
        with open(os.environ["FEDPRIVACY_TIMING_FILE"], "w") as fh:
            json.dump(times, fh)
        return MetricRecord({"eval_loss": loss})

    n = cfg.strategy.min_clients
    FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=n).start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.rounds,
        timeout=cfg.strategy.round_timeout, train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(), evaluate_fn=central)
