"""``kd``: plain knowledge distillation from a local teacher, swing distillation's baseline.

The teacher is the received global model fine-tuned on the client's private data; the student
(the received model) learns from the teacher's soft targets at one fixed temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.registry import Method, check, register


@dataclass
class KDConfig:
    """Plain distillation settings (``client.kd``)."""

    temperature: float = field(default=1.0, metadata={"help": "distillation temperature T"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the distillation term"})
    teacher_steps: int = field(default=100, metadata={"help": "teacher fine-tuning steps"})
    student_steps: int = field(default=100, metadata={"help": "student distillation steps"})

    def validate(self) -> None:
        check(self.temperature > 0, "temperature", "must be > 0", self.temperature)
        check(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]", self.alpha)
        check(self.teacher_steps >= 1, "teacher_steps", "must be >= 1", self.teacher_steps)
        check(self.student_steps >= 1, "student_steps", "must be >= 1", self.student_steps)


def local_teacher(job: Any, steps: int) -> Any:
    """The received model fine-tuned for ``steps`` on the client's private data."""
    import copy
    from dataclasses import replace

    from fedprivacy.training import sft

    teacher = copy.deepcopy(job.model)
    sft(teacher, job.res.train_set, replace(job.cfg.train, steps=steps), job.seed)
    return teacher.eval()


def distill(job: Any, teacher: Any, steps: int, loss_of: Any) -> dict[str, float]:
    """Train ``job.model`` for ``steps`` on ``loss_of(student_logits, teacher_logits, batch)``."""
    import torch

    from fedprivacy.training import endless_batches, make_optimizer, tail_mean, train_loop

    tc = job.cfg.train

    def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits
        student_logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
        return loss_of(student_logits, teacher_logits, batch)

    losses = train_loop(job.model, endless_batches(job.res.train_set, tc.batch_size, job.seed),
                        steps, make_optimizer(job.model, tc), tc.max_grad_norm, loss_fn)
    return {"loss": tail_mean(losses)}


def kd_step(job: Any) -> dict[str, float]:
    """Distil ``job.model`` from a local teacher at the fixed temperature ``client.kd``."""
    from fedprivacy.privacy.swing import kd_loss

    settings: KDConfig = job.settings(METHOD)
    teacher = local_teacher(job, settings.teacher_steps)
    return distill(job, teacher, settings.student_steps,
                   lambda s, t, batch: kd_loss(s, t, batch["labels"], settings.temperature,
                                               settings.alpha))


METHOD = register(Method(
    name="kd", kind="train", help="plain distillation from a local teacher (swing's baseline)",
    settings=KDConfig, client_step=kd_step))
