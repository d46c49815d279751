"""``sft``: supervised fine-tuning with AdamW on the client's training split.

When the train message carries weighted pseudo samples (FewFedWeight), every step minimises
L(local batch) + λ·L_w(pseudo batch) (`fedprivacy.training.sft`).
"""

from __future__ import annotations

from typing import Any

from fedprivacy.methods.registry import Method, register


def sft_step(job: Any) -> dict[str, float]:
    """Fine-tune ``job.model`` in place on the client's data (plus any pseudo data)."""
    from fedprivacy.methods.fewfedweight import pseudo_set
    from fedprivacy.training import sft, tail_mean

    pseudo, weight = pseudo_set(job)
    losses = sft(job.model, job.res.train_set, job.cfg.train, job.seed, pseudo, weight)
    return {"loss": tail_mean(losses),
            "pseudo_samples": float(len(pseudo["weight"]) if pseudo else 0)}


METHOD = register(Method(
    name="sft", kind="train", help="supervised fine-tuning (AdamW) on the client's data",
    client_step=sft_step))
