"""The ClientApp: local training with the configured privacy steps, evaluation, task metadata.

Only weights, metrics and the task's public description leave the client.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.evaluate import client_model_scores, evaluate_job
from clients.job import ClientJob, resources_of
from clients.pipeline import run_pipeline
from fedprivacy.models import cpu_state_dict

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    job = ClientJob.from_message(msg, context)
    if job.partition_id in job.cfg.client.fail_partitions:
        raise RuntimeError(f"injected failure on partition {job.partition_id} "
                           "(client.fail_partitions)")
    metrics = run_pipeline(job)
    if job.local_only:
        job.keep_local_model()
    if job.cfg.evaluation.client_model_scores or job.cfg.strategy.name == "fewfedweight":
        metrics.update(client_model_scores(job))
    metrics.update({"num-examples": len(job.res.data.train), "partition-id": job.partition_id,
                    "seconds": time.perf_counter() - started})
    return Message(RecordDict({"arrays": ArrayRecord(cpu_state_dict(job.model)),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = ClientJob.from_message(msg, context)
    metrics = evaluate_job(job)
    metrics.update({"num-examples": len(job.res.data.validation),
                    "partition-id": job.partition_id})
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The public description of this client's task (no example leaves the client)."""
    res, pid = resources_of(context)
    task = res.data.task
    description = task.describe() if task is not None else {}
    return Message(RecordDict({"task": ConfigRecord({"partition-id": pid, **description})}),
                   reply_to=msg)
