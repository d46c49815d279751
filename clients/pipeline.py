"""The local pipeline: one training step, then post-training steps, composed by config.

``client.steps: [sft | dp_sgd | swing | kd, depn]``. Each step takes the `ClientJob`, changes its
model in place and returns its metrics, which are reported as ``<step>.<metric>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from clients.job import ClientJob
from clients.privacy_steps import depn_step, dp_sgd_step, kd_step, swing_step, tail_mean
from fedprivacy.data.encoding import encode_records
from fedprivacy.pseudo import pseudo_from_config
from fedprivacy.training import sft

Step = Callable[[ClientJob], dict[str, float | list[int]]]


def pseudo_set(job: ClientJob) -> dict[str, torch.Tensor] | None:
    """FewFedWeight's weighted pseudo samples from the train message, encoded, or None."""
    triples = pseudo_from_config(job.config)
    if not triples:
        return None
    records = [{"prompt": p, "completion": c, "task": "pseudo", "private_spans": []}
               for p, c, _ in triples]
    encoded = encode_records(job.res.tokenizer, records, job.cfg.data.max_length,
                             on_overflow="truncate")
    encoded["weight"] = torch.tensor([w for _, _, w in triples], dtype=torch.float32)
    return encoded


def sft_step(job: ClientJob) -> dict[str, float]:
    """Supervised fine-tuning with AdamW on the client's training split (plus pseudo data)."""
    pseudo = pseudo_set(job)
    losses = sft(job.model, job.res.train_set, job.cfg.train, job.seed, pseudo,
                 job.cfg.strategy.fewfedweight.pseudo_loss_weight)
    return {"loss": tail_mean(losses), "pseudo_samples": float(len(pseudo["weight"]) if pseudo else 0)}


STEPS: dict[str, Step] = {
    "sft": sft_step,
    "dp_sgd": dp_sgd_step,
    "swing": swing_step,
    "kd": kd_step,
    "depn": depn_step,
}


def run_pipeline(job: ClientJob) -> dict[str, float | list[int]]:
    """Run ``client.steps`` in order; metrics carry the step name and its duration."""
    metrics: dict[str, float | list[int]] = {}
    for name in job.cfg.client.steps:
        if name not in STEPS:
            raise KeyError(f"client.steps: step {name!r} is not available; "
                           f"known steps: {sorted(STEPS)}")
        started = time.perf_counter()
        for key, value in STEPS[name](job).items():
            metrics[f"{name}.{key}"] = value
        metrics[f"{name}.seconds"] = time.perf_counter() - started
    metrics["train_loss"] = metrics[f"{job.cfg.client.steps[0]}.loss"]
    return metrics
