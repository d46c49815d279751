"""Swing distillation (Li et al. 2022, arXiv 2212.08349): a documented reconstruction.

The paper is known from its abstract only: distillation with a per-token temperature set by the
likelihood that the token is private, and noise on the soft targets given to the student. The
pieces below and all their defaults are THIS project's choices, not the paper's:

- privacy likelihood p_t in [0, 1] from a detector (``fedprivacy.privacy.detectors``);
- temperature map, ``linear`` (default) T(p) = T0 + (Tmax - T0) p, or ``exponential``
  T(p) = T0 (Tmax / T0)^p; T0 = 1 and Tmax = 20 by default, so private tokens are distilled
  from an almost flat teacher distribution;
- noise on the teacher's tempered probabilities q_t = softmax(z_t / T_t), scaled by the token's
  privacy likelihood p_t (``noise_on: private``, the default; ``all`` adds it at every position),
  then clamped at 0 and renormalised: ``gaussian`` N(0, sigma^2) with the classical Gaussian-mechanism bound
  sigma = Delta_2 sqrt(2 ln(1.25 / delta)) / epsilon, or ``laplace`` with scale b = Delta_1 /
  epsilon, where Delta_1 = 2 and Delta_2 = sqrt(2) are the largest L1 and L2 distances between
  two probability vectors; ``none`` for no noise. (The classical Gaussian bound is proven for
  epsilon < 1; above it sigma is a heuristic scale.)
- loss over tokens whose label is not IGNORE_INDEX, averaged over those tokens:
  L = (1 - alpha) mean_t w_t CE_t + alpha mean_t T_t^2 KL(q~_t || p_student,t(T_t)), alpha = 0.5,
  with hard-label weights w_t = 1 - p_t when the likelihood is passed (else 1): the hard label of
  a private token would otherwise hand the secret to the student whatever the soft targets.
  T_t^2 keeps the gradient scale of the KD term independent of T (Hinton et al. 2015).

Temperatures are aligned with the tokens (as ``labels`` and the detector output are): the
logit at position t-1, which predicts token t, is tempered with T_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedprivacy.lm import IGNORE_INDEX, token_nll
from fedprivacy.methods.swing import SwingConfig

L1_SENSITIVITY = 2.0
L2_SENSITIVITY = math.sqrt(2.0)


def linear_temperature(p: torch.Tensor, t0: float, t_max: float) -> torch.Tensor:
    """T(p) = T0 + (Tmax - T0) p."""
    return t0 + (t_max - t0) * p


def exponential_temperature(p: torch.Tensor, t0: float, t_max: float) -> torch.Tensor:
    """T(p) = T0 (Tmax / T0)^p: equal to T0 at p = 0 and Tmax at p = 1, geometric in between."""
    return t0 * (t_max / t0) ** p


TEMPERATURE_MAPS: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "linear": linear_temperature,
    "exponential": exponential_temperature,
}


def swing_temperatures(likelihood: torch.Tensor, cfg: SwingConfig) -> torch.Tensor:
    """Per-token temperatures [N, T] from privacy likelihoods [N, T] in [0, 1]."""
    if cfg.temperature_map not in TEMPERATURE_MAPS:
        raise ValueError(
            f"client.swing.temperature_map: unknown {cfg.temperature_map!r}; choose one of {sorted(TEMPERATURE_MAPS)}"
        )
    if cfg.t0 <= 0 or cfg.t_max <= 0:
        raise ValueError(f"client.swing.t0 and t_max must be > 0, got {cfg.t0} and {cfg.t_max}")
    if likelihood.min() < 0 or likelihood.max() > 1:
        raise ValueError("privacy likelihoods must lie in [0, 1]")
    return TEMPERATURE_MAPS[cfg.temperature_map](likelihood.float(), cfg.t0, cfg.t_max)


NOISE_MODELS = ("gaussian", "laplace", "none")  # the noise models `noise_scale` knows


def noise_scale(cfg: SwingConfig) -> float:
    """Gaussian sigma = Delta_2 sqrt(2 ln(1.25/delta)) / epsilon; Laplace b = Delta_1 / epsilon; 0 for none."""
    if cfg.noise == "none":
        return 0.0
    if cfg.epsilon <= 0:
        raise ValueError(f"client.swing.epsilon must be > 0, got {cfg.epsilon}")
    if cfg.noise == "gaussian":
        if not 0 < cfg.delta < 1:
            raise ValueError(f"client.swing.delta must be in (0, 1), got {cfg.delta}")
        return L2_SENSITIVITY * math.sqrt(2 * math.log(1.25 / cfg.delta)) / cfg.epsilon
    if cfg.noise == "laplace":
        return L1_SENSITIVITY / cfg.epsilon
    raise ValueError(f"client.swing.noise: unknown {cfg.noise!r}; choose gaussian, laplace or none")


def sample_noise(
    shape: torch.Size, cfg: SwingConfig, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Noise of ``cfg.noise`` with scale ``noise_scale(cfg)``; Laplace as b (E1 - E2), E ~ Exp(1)."""
    scale = noise_scale(cfg)
    if cfg.noise == "gaussian":
        return scale * torch.randn(shape, generator=generator, device=device)
    if cfg.noise == "laplace":
        e1 = torch.empty(shape, device=device).exponential_(generator=generator)
        e2 = torch.empty(shape, device=device).exponential_(generator=generator)
        return scale * (e1 - e2)
    return torch.zeros(shape, device=device)


def noisy_soft_targets(
    teacher_logits: torch.Tensor,
    temperatures: torch.Tensor,
    cfg: SwingConfig,
    generator: torch.Generator | None = None,
    noise_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """q~_t = normalise(max(softmax(z_t / T_t) + w_t noise, 0)), [N, T, V]; uniform where all clamp to 0.

    ``noise_weight`` w [N, T] (1 everywhere if None) scales the noise of each position.
    """
    q = torch.softmax(teacher_logits.detach().float() / temperatures.unsqueeze(-1), -1)
    if cfg.noise == "none":
        return q
    noise = sample_noise(q.shape, cfg, generator, q.device)
    if noise_weight is not None:
        noise = noise * noise_weight.unsqueeze(-1).float()
    q = (q + noise).clamp(min=0)
    total = q.sum(-1, keepdim=True)
    return torch.where(total > 0, q / total.clamp(min=1e-30), torch.full_like(q, 1 / q.shape[-1]))


def _distillation_loss(
    student_logits: torch.Tensor,
    soft_targets: torch.Tensor,
    labels: torch.Tensor,
    temperatures: torch.Tensor,
    alpha: float,
    label_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 - alpha) mean_t w_t CE_t + alpha mean_t T_t^2 KL(q_t || softmax(s_t / T_t)) over labelled tokens.

    ``soft_targets`` [N, T-1, V], ``temperatures`` and ``label_weights`` w [N, T-1] (1 if None)
    belong to the predicting positions.
    """
    valid = labels[:, 1:] != IGNORE_INDEX
    count = valid.sum().clamp(min=1)
    nll = token_nll(student_logits, labels)
    ce = (nll if label_weights is None else nll * label_weights).sum() / count
    log_p = torch.log_softmax(student_logits[:, :-1].float() / temperatures.unsqueeze(-1), -1)
    kl = (torch.xlogy(soft_targets, soft_targets) - soft_targets * log_p).sum(-1)
    kd = (temperatures**2 * kl * valid).sum() / count
    return (1 - alpha) * ce + alpha * kd


def swing_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperatures: torch.Tensor,
    cfg: SwingConfig,
    generator: torch.Generator | None = None,
    likelihood: torch.Tensor | None = None,
) -> torch.Tensor:
    """Swing loss with per-token temperatures [N, T] (aligned with labels) and noisy soft targets.

    With the privacy ``likelihood`` p [N, T], the hard-label CE of token t is weighted by
    1 - p_t, so a token flagged private is learned only from its hot, noisy soft target; without
    it the hard labels teach the student the private tokens directly (this project's choice).
    With ``cfg.noise_on == "private"`` the noise of token t is scaled by p_t, so a public
    token's soft target keeps the teacher's knowledge (without a likelihood: noise everywhere).
    """
    temps = temperatures[:, 1:].float()
    private = None if likelihood is None else likelihood[:, 1:].float()
    noise_weight = private if cfg.noise_on == "private" else None
    targets = noisy_soft_targets(teacher_logits[:, :-1], temps, cfg, generator, noise_weight)
    weights = None if private is None else 1 - private
    return _distillation_loss(student_logits, targets, labels, temps, cfg.alpha, weights)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Plain distillation (Hinton et al. 2015): (1 - alpha) CE + alpha T^2 KL(q(T) || p(T)), fixed T."""
    temps = torch.full(labels[:, 1:].shape, float(temperature), device=student_logits.device)
    targets = torch.softmax(teacher_logits[:, :-1].detach().float() / temperature, -1)
    return _distillation_loss(student_logits, targets, labels, temps, alpha)
