"""``swing``: swing distillation (METHODS.md §5), a documented reconstruction.

A local teacher (the received model fine-tuned on the client's data) gives soft targets; each
token's temperature comes from its privacy likelihood p_t (a detector), T_t = map(p_t), and
the soft targets get noise scaled to a budget (ε, δ) (`fedprivacy.privacy.swing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.kd import distill, local_teacher
from fedprivacy.methods.registry import Method, check, check_choice, register

# The names the code dispatches on: `DETECTOR_BUILDERS` below (one per
# `fedprivacy.privacy.detectors.DETECTORS` entry), `fedprivacy.privacy.swing`'s
# TEMPERATURE_MAPS and NOISE_MODELS (a unit test keeps these tuples equal to those tables).
TEMPERATURE_MAP_NAMES = ("linear", "exponential")
NOISE_MODEL_NAMES = ("gaussian", "laplace", "none")
NOISE_ON = ("private", "all")  # where the soft-target noise goes (`swing_distillation_loss`)


def _span(job: Any, teacher: Any) -> Any:
    from fedprivacy.privacy.detectors import SpanDetector

    return SpanDetector()


def _pattern(job: Any, teacher: Any) -> Any:
    from fedprivacy.privacy.detectors import PatternDetector

    return PatternDetector(job.res.tokenizer)


def _model_score(job: Any, teacher: Any) -> Any:
    from fedprivacy.privacy.detectors import ModelScoreDetector

    return ModelScoreDetector(teacher, job.model)


# detector name -> builder(job, teacher) of a per-token privacy-likelihood detector
DETECTOR_BUILDERS: dict[str, Callable[[Any, Any], Any]] = {
    "span": _span, "pattern": _pattern, "model_score": _model_score}


@dataclass
class SwingConfig:
    """Swing distillation settings (``client.swing``); every default is this project's choice."""

    detector: str = field(default="span", metadata={"help": f"one of {sorted(DETECTOR_BUILDERS)}"})
    temperature_map: str = field(default="linear",
                                 metadata={"help": f"one of {list(TEMPERATURE_MAP_NAMES)}"})
    t0: float = field(default=1.0, metadata={"help": "temperature of a public token (p = 0)"})
    t_max: float = field(default=20.0, metadata={"help": "temperature of a private token"})
    noise: str = field(default="gaussian", metadata={"help": f"one of {list(NOISE_MODEL_NAMES)}"})
    noise_on: str = field(default="private", metadata={
        "help": "private: noise scaled by each token's privacy likelihood; all: every token"})
    epsilon: float = field(default=8.0, metadata={"help": "budget of the soft-target noise"})
    delta: float = field(default=1e-5, metadata={"help": "δ of the Gaussian noise"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the distillation term"})
    teacher_steps: int = field(default=100, metadata={"help": "teacher fine-tuning steps"})
    student_steps: int = field(default=100, metadata={"help": "student distillation steps"})

    def validate(self) -> None:
        check_choice(self.detector, "detector", DETECTOR_BUILDERS)
        check_choice(self.temperature_map, "temperature_map", TEMPERATURE_MAP_NAMES)
        check_choice(self.noise, "noise", NOISE_MODEL_NAMES)
        check_choice(self.noise_on, "noise_on", NOISE_ON)
        check(self.t0 > 0, "t0", "must be > 0", self.t0)
        check(self.t_max > 0, "t_max", "must be > 0", self.t_max)
        if self.noise != "none":
            check(self.epsilon > 0, "epsilon", "must be > 0", self.epsilon)
        if self.noise == "gaussian":
            check(0 < self.delta < 1, "delta", "must be in (0, 1)", self.delta)
        check(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]", self.alpha)
        check(self.teacher_steps >= 1, "teacher_steps", "must be >= 1", self.teacher_steps)
        check(self.student_steps >= 1, "student_steps", "must be >= 1", self.student_steps)


def swing_step(job: Any) -> dict[str, float]:
    """Distil ``job.model`` with per-token temperatures and noisy soft targets."""
    import torch

    from fedprivacy.privacy.swing import swing_distillation_loss, swing_temperatures

    settings: SwingConfig = job.settings(METHOD)
    teacher = local_teacher(job, settings.teacher_steps)
    detector = DETECTOR_BUILDERS[settings.detector](job, teacher)
    generator = job.secret_generator()  # the soft-target noise must be the client's secret

    def loss_of(student: torch.Tensor, teacher_logits: torch.Tensor, batch: dict) -> torch.Tensor:
        likelihood = detector(batch["input_ids"], batch["attention_mask"], batch["private_mask"])
        return swing_distillation_loss(student, teacher_logits, batch["labels"],
                                       swing_temperatures(likelihood, settings), settings,
                                       generator, likelihood)

    return distill(job, teacher, settings.student_steps, loss_of)


METHOD = register(Method(
    name="swing", kind="train",
    help="swing distillation: per-token temperature from the privacy likelihood, noisy targets",
    settings=SwingConfig, client_step=swing_step))
