"""Local language-model training: the loop every client step builds on."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from transformers import PreTrainedModel

from fedprivacy.config import TrainConfig
from fedprivacy.data.encoding import iterate_batches
from fedprivacy.deadline import checkpoint
from fedprivacy.pseudo import weighted_lm_loss

Batch = dict[str, torch.Tensor]
LossFn = Callable[[PreTrainedModel, Batch], torch.Tensor]


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch (a dict of tensors, or of such dicts) to ``device``."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device)
            for k, v in batch.items()}


def causal_lm_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over tokens whose label is not IGNORE_INDEX."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


def endless_batches(encoded: Batch, batch_size: int, seed: int) -> Iterator[Batch]:
    """Shuffled batches, epoch after epoch, reseeded per epoch (deterministic)."""
    epoch = 0
    while True:
        yield from iterate_batches(encoded, batch_size, seed=seed + epoch, shuffle=True)
        epoch += 1


def make_optimizer(model: PreTrainedModel, tc: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)


def train_loop(model: PreTrainedModel, batches: Iterator[Batch], steps: int,
               optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.0,
               loss_fn: LossFn = causal_lm_loss) -> list[float]:
    """Run ``steps`` optimizer steps; return the loss of each step.

    A non-finite loss stops training with an error instead of sending a broken model.
    """
    model.train()
    device = next(model.parameters()).device
    losses: list[float] = []
    for step in range(steps):
        checkpoint()  # the round's deadline (fedprivacy.deadline)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, to_device(next(batches), device))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def weighted_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Per-sample LM loss scaled by ``batch["weight"]`` (FewFedWeight's weighted pseudo data)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return weighted_lm_loss(logits, batch["labels"], batch["weight"])


def sft(model: PreTrainedModel, encoded: Batch, tc: TrainConfig, seed: int,
        extra: Batch | None = None, extra_weight: float = 0.0) -> list[float]:
    """Supervised fine-tuning on the client's encoded records (AdamW).

    With ``extra`` (weighted records, e.g. FewFedWeight's pseudo data, carrying a ``weight``
    per row) every step minimises L(local batch) + λ·L_w(extra batch), λ = ``extra_weight``:
    the extra data add to the client's own data, they do not displace it.
    """
    batches = endless_batches(encoded, tc.batch_size, seed)
    if extra is None:
        return train_loop(model, batches, tc.steps, make_optimizer(model, tc), tc.max_grad_norm)
    pairs = ({"local": a, "extra": b}
             for a, b in zip(batches, endless_batches(extra, tc.batch_size, seed + 1)))

    def mixed_loss(m: PreTrainedModel, b: dict[str, Batch]) -> torch.Tensor:
        return causal_lm_loss(m, b["local"]) + extra_weight * weighted_loss(m, b["extra"])

    return train_loop(model, pairs, tc.steps, make_optimizer(model, tc), tc.max_grad_norm,
                      mixed_loss)


def tail_mean(losses: list[float]) -> float:
    """The loss a training step reports: the mean of its last five optimizer steps."""
    return sum(losses[-5:]) / len(losses[-5:])
