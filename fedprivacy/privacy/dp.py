"""DP-SGD for Hugging Face causal LMs with Opacus, and RDP accounting that composes over rounds.

Each step (Abadi et al. 2016) clips every example's gradient to norm C and adds Gaussian noise:

    g = (sum_i g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / B,

with B the expected batch size. The per-example loss is the mean token loss of that sequence,
so one example's gradient does not depend on the other examples' lengths (HF's built-in loss
averages over all tokens of the batch and would break that). Privacy is tracked by Opacus'
RDP accountant; its history (noise, sample rate, steps) exports to plain number lists, so a
Flower client keeps it in its ``Context`` and epsilon after round r covers rounds 1..r.

HF models and Opacus: ``make_private`` assembles Opacus' own pieces (``GradSampleModule``,
``DPOptimizer``, ``DPDataLoader`` and the accountant's step hook, which is what
``PrivacyEngine.make_private`` wires) so that it can start from a restored accountant and also
accept a bare sample rate for callers that draw their own batches. Known breakages:

- learned absolute position embeddings (GPT-2 ``wpe``) see position ids of batch size 1 and get
  a per-sample gradient of batch 1: the trainer passes per-row position ids;
- tied input/output embeddings (GPT-2 ``lm_head`` = ``wte``) work: Opacus sums the per-sample
  gradients of both uses (checked against a per-example loop in the tests);
- layers without an Opacus grad sampler (HF RMSNorm, GPT-2 ``Conv1D``) use Opacus' functorch
  fallback; layers Opacus rejects (e.g. BatchNorm, trainable layers with buffers) raise a
  ``ValueError`` naming the module before training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from fedprivacy.lm import IGNORE_INDEX, lm_logits, token_nll
from fedprivacy.methods.dp_sgd import DPConfig

AccountantState = dict[str, list[float] | list[int]]
_BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def export_accountant_state(accountant: RDPAccountant) -> AccountantState:
    """The accountant's history as number lists (fits a Flower ConfigRecord or MetricRecord)."""
    return {
        "noise_multiplier": [float(sigma) for sigma, _, _ in accountant.history],
        "sample_rate": [float(q) for _, q, _ in accountant.history],
        "steps": [int(steps) for _, _, steps in accountant.history],
    }


def restore_accountant(state: Mapping[str, Sequence[float | int]] | None = None) -> RDPAccountant:
    """An RDP accountant with the exported history (a fresh one for ``None``)."""
    accountant = RDPAccountant()
    if state:
        columns = [list(state[key]) for key in ("noise_multiplier", "sample_rate", "steps")]
        if len({len(column) for column in columns}) != 1:
            raise ValueError("accountant state: noise_multiplier, sample_rate and steps differ in length")
        accountant.history = [(float(s), float(q), int(k)) for s, q, k in zip(*columns)]
    return accountant


def epsilon(accountant: RDPAccountant, delta: float) -> float:
    """epsilon spent so far at ``delta`` (RDP composition of the whole history)."""
    return float(accountant.get_epsilon(delta=delta))


def resolve_noise_multiplier(cfg: DPConfig, sample_rate: float, total_steps: int | None) -> float:
    """sigma for this run: ``cfg.noise_multiplier``, or the one meeting ``cfg.target_epsilon``.

    For a target, sigma is found by Opacus' ``get_noise_multiplier`` for ``total_steps`` steps
    at ``sample_rate`` (RDP); every round of a run computes the same sigma from the same plan.
    """
    if cfg.target_epsilon < 0:
        raise ValueError(f"client.dp.target_epsilon must be >= 0, got {cfg.target_epsilon}")
    if cfg.target_epsilon == 0:
        if cfg.noise_multiplier < 0:
            raise ValueError(f"client.dp.noise_multiplier must be >= 0, got {cfg.noise_multiplier}")
        return cfg.noise_multiplier
    if not total_steps or total_steps < 1:
        raise ValueError("client.dp.target_epsilon needs the planned total number of DP steps (total_steps)")
    try:
        return get_noise_multiplier(
            target_epsilon=cfg.target_epsilon,
            target_delta=cfg.delta,
            sample_rate=sample_rate,
            steps=total_steps,
            accountant="rdp",
        )
    except ValueError as err:
        raise ValueError(
            f"client.dp.target_epsilon={cfg.target_epsilon} cannot be met at delta={cfg.delta} "
            f"with sample rate {sample_rate:.4g} over {total_steps} steps (no noise multiplier up to "
            f"1e6 reaches it); raise client.dp.target_epsilon or client.dp.delta"
        ) from err


def _check_supported(model: nn.Module) -> None:
    """Raise a ValueError naming every trainable module that Opacus cannot handle."""
    problems = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = [str(err) for err in validator(module)] if validator else []
        if any(True for _ in module.buffers()):
            errors.append("a trainable layer with buffers")
        problems += [f"{name} ({type(module).__name__}): {err}" for err in errors]
    if problems:
        raise ValueError(
            "DP-SGD (Opacus) cannot compute per-sample gradients for: " + "; ".join(problems)
            + ". Freeze these modules (requires_grad=False) or replace them, e.g. with "
            "opacus.validators.ModuleValidator.fix"
        )


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss [N]: mean token NLL over the sequence's labels (0 for a row without)."""
    count = (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
    return token_nll(logits, labels).sum(1) / count


@dataclass
class DPTrainer:
    """A model trained with DP-SGD: call ``step(batch)`` once per batch.

    ``data_loader`` is the loader to iterate (Poisson-resampled when configured), or ``None``
    when ``make_private`` got a sample rate and the caller draws batches itself.
    """

    module: GradSampleModule
    optimizer: DPOptimizer
    accountant: RDPAccountant
    sample_rate: float
    noise_multiplier: float
    delta: float
    data_loader: DataLoader | None = None

    def step(self, batch: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> float:
        """One private step on a batch of input_ids, attention_mask, labels; returns the loss.

        A batch is a mapping with those keys or a sequence in that order. An empty batch (which
        Poisson sampling can draw) still takes a noise-only step, as the accountant assumes.
        """
        ids, mask, labels = (batch[k] for k in _BATCH_KEYS) if isinstance(batch, Mapping) else batch[:3]
        self.optimizer.zero_grad(set_to_none=True)
        if len(ids) == 0:
            for p in self.optimizer.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            self.optimizer.step()
            return 0.0
        loss = sequence_losses(lm_logits(self.module, ids, mask), labels).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DP-SGD training loss is {loss.item()}")
        loss.backward()
        self._check_grad_samples(len(ids))
        self.optimizer.step()
        return loss.item()

    def _check_grad_samples(self, batch_size: int) -> None:
        """Raise a ValueError naming a trainable parameter without a per-sample gradient per row."""
        for name, p in self.module._module.named_parameters():
            if not p.requires_grad:
                continue
            gs = getattr(p, "grad_sample", None)
            if gs is None or gs.shape[0] != batch_size:
                raise ValueError(
                    f"DP-SGD: parameter {name!r} has no per-sample gradient for batch size {batch_size} "
                    f"(got {None if gs is None else tuple(gs.shape)}); a module that is unused or "
                    "broadcasts over the batch (e.g. position embeddings without per-row position ids) "
                    "cannot be trained privately: freeze it with requires_grad=False"
                )

    def epsilon(self) -> float:
        """epsilon spent so far, all rounds included, at the configured delta."""
        return epsilon(self.accountant, self.delta)

    def export_state(self) -> AccountantState:
        """Accountant state to keep for the next round (see ``restore_accountant``)."""
        return export_accountant_state(self.accountant)

    def close(self) -> nn.Module:
        """Remove the Opacus hooks and return the plain model."""
        return self.module.to_standard_module()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataLoader | float,
    cfg: DPConfig,
    accountant_state: Mapping[str, Sequence[float | int]] | None = None,
    *,
    batch_size: int | None = None,
    total_steps: int | None = None,
    noise_generator: torch.Generator | None = None,
) -> DPTrainer:
    """Wrap ``model`` and ``optimizer`` for DP-SGD, continuing the accountant in ``accountant_state``.

    ``data`` is a DataLoader (sample rate q = 1 / len(loader), expected batch = q * |dataset|,
    Poisson-resampled if ``cfg.poisson_sampling``) or a sample rate q, with ``batch_size`` the
    expected batch size of the batches the caller draws (Poisson batches at rate q for the
    accountant to hold: `fedprivacy.methods.dp_sgd` draws them with Opacus' ``DPDataLoader``).
    ``total_steps`` is the number of DP steps
    planned over the whole run (all rounds); it is needed for ``cfg.target_epsilon``.
    """
    if cfg.max_grad_norm <= 0:
        raise ValueError(f"client.dp.max_grad_norm must be > 0, got {cfg.max_grad_norm}")
    if not 0 < cfg.delta < 1:
        raise ValueError(f"client.dp.delta must be in (0, 1), got {cfg.delta}")
    loader = None
    if isinstance(data, DataLoader):
        sample_rate = 1 / len(data)
        expected_batch = int(len(data.dataset) * sample_rate)
        loader = DPDataLoader.from_data_loader(data) if cfg.poisson_sampling else data
    else:  # the caller draws the batches (with Poisson sampling at this rate, if configured)
        if not batch_size:
            raise ValueError("make_private with a sample rate needs the expected batch_size")
        sample_rate, expected_batch = float(data), batch_size
    if not 0 < sample_rate <= 1:
        raise ValueError(f"DP-SGD sample rate must be in (0, 1], got {sample_rate}")
    noise = resolve_noise_multiplier(cfg, sample_rate, total_steps)
    model_params = {id(p) for p in model.parameters()}
    if any(id(p) not in model_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("make_private: the optimizer holds parameters that are not the model's")
    model.train()
    _check_supported(model)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    if cfg.poisson_sampling:
        module.forbid_grad_accumulation()
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=noise,
        max_grad_norm=cfg.max_grad_norm,
        expected_batch_size=expected_batch,
        loss_reduction="mean",
        generator=noise_generator,
    )
    accountant = restore_accountant(accountant_state)
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return DPTrainer(module, dp_optimizer, accountant, sample_rate, noise, cfg.delta, loader)
