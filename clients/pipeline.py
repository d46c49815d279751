"""The local pipeline: one training step, then post-training steps, composed by config.

``client.pipeline: [<train method>, <post method>, ...]`` names registered methods
(`fedprivacy.methods.registry`). Each step takes the `ClientJob`, changes its model in place
and returns its metrics, which are reported as ``<method>.<metric>`` with its duration.
"""

from __future__ import annotations

import time

from fedprivacy.clients.job import ClientJob
from fedprivacy.methods import registry


def run_pipeline(job: ClientJob) -> dict[str, float | list[int]]:
    """Run ``client.pipeline`` in order; metrics carry the method name and its duration."""
    metrics: dict[str, float | list[int]] = {}
    for name in job.cfg.client.pipeline:
        method = registry.get(name)
        started = time.perf_counter()
        for key, value in method.client_step(job).items():
            metrics[f"{name}.{key}"] = value
        metrics[f"{name}.seconds"] = time.perf_counter() - started
    metrics["train_loss"] = metrics[f"{job.cfg.client.pipeline[0]}.loss"]
    return metrics
