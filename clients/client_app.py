"""The ClientApp: local training with the configured pipeline, evaluation, task metadata.

Only weights, metrics and the task's public description leave the client. Heavy modules
(Opacus, the attribution engine) are imported by the method steps that need them, so an SFT
client does not pay for them (a deployment starts a process per message).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedprivacy import adapters, wire
from fedprivacy.clients.evaluate import client_model_scores, evaluate_job
from fedprivacy.clients.job import ClientJob, resources_of
from fedprivacy.clients.pipeline import run_pipeline
from fedprivacy.deadline import deadline

app = ClientApp()
THREADS_KEY = "torch-threads"  # node config: torch's intra-op threads in this node's ClientApps


def _use_node_threads(context: Context) -> None:
    """``--node-config "... torch-threads=N"``: N torch threads (several SuperNodes on one
    machine each take their share instead of all cores); absent: torch's default."""
    if THREADS_KEY in context.node_config:
        import torch

        threads = int(context.node_config[THREADS_KEY])
        if threads < 1:
            raise ValueError(f"node_config {THREADS_KEY}: must be >= 1 (got {threads})")
        torch.set_num_threads(threads)


@app.lifespan()
def _lifespan(context: Context) -> Iterator[None]:
    _use_node_threads(context)
    yield


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    job = ClientJob.from_message(msg, context)
    if job.partition_id in job.cfg.client.fail_partitions:
        raise RuntimeError(f"injected failure on partition {job.partition_id} "
                           "(client.fail_partitions)")
    # the received global model, before any local step changes it
    evaluation = _evaluation(job, msg) if job.config.get(wire.EVALUATE_FIRST, False) else None
    with deadline(job.config.get(wire.DEADLINE), _step_delay(job)):
        metrics = run_pipeline(job)
    if job.keeps_own_model:
        job.keep_own_model()
    if job.cfg.evaluation.client_model_scores or job.config.get(wire.CLIENT_SCORES, False):
        metrics.update(client_model_scores(job))
    arrays = ArrayRecord(adapters.wire_state(job.model))
    metrics.update({wire.NUM_EXAMPLES: len(job.res.data.train),
                    wire.PARTITION_ID: job.partition_id,
                    wire.BYTES_DOWN: adapters.num_bytes(msg.content[wire.ARRAYS]),
                    wire.BYTES_UP: adapters.num_bytes(arrays),
                    wire.SECONDS: time.perf_counter() - started})
    content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})
    if evaluation is not None:
        content[wire.EVALUATION] = MetricRecord(evaluation)
    return Message(content, reply_to=msg)


def _step_delay(job: ClientJob) -> float:
    """Fault injection: seconds a straggling partition sleeps at every optimizer step."""
    c = job.cfg.client
    slow = job.partition_id in c.slow_partitions and (
        not c.slow_rounds or job.server_round in c.slow_rounds)
    return c.slow_step_seconds if slow else 0.0


def _evaluation(job: ClientJob, msg: Message) -> dict:
    """The metrics of an evaluate reply: the job's model on this client's validation split."""
    metrics = evaluate_job(job)
    metrics.update({wire.NUM_EXAMPLES: len(job.res.data.validation),
                    wire.PARTITION_ID: job.partition_id,
                    wire.BYTES_DOWN: adapters.num_bytes(msg.content[wire.ARRAYS])})
    return metrics


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = ClientJob.from_message(msg, context)
    return Message(RecordDict({wire.METRICS: MetricRecord(_evaluation(job, msg))}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The public description of this client's task (no example leaves the client)."""
    res, pid = resources_of(context)
    task = res.data.task
    description = task.describe() if task is not None else {}
    return Message(RecordDict({wire.TASK: ConfigRecord({wire.PARTITION_ID: pid, **description})}),
                   reply_to=msg)
