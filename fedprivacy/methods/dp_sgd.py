"""``dp_sgd``: DP-SGD with Opacus (Abadi et al. 2016), ε composed over rounds.

What runs is what the accountant assumes:

- **Poisson sampling** with one sample rate q = B / N (B = ``train.batch_size``, N = the
  client's training records, `sample_rate`) in the client, the preflight and a resumed run.
- **Noise the server cannot predict**: the noise and the sampling draw from a generator seeded
  by ``os.urandom`` in the client (`ClientJob.secret_generator`), never from the run seed,
  which the server knows.
- The RDP accountant's history lives in the node's ``Context.state``, so ε after round r
  covers rounds 1..r of this client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.registry import Method, check, register

STATE_KEY = "dp-accountant"  # node-local state (Context.state), never on the wire


@dataclass
class DPConfig:
    """DP-SGD settings (``client.dp``).

    target_epsilon = 0 trains with ``noise_multiplier``; a positive target replaces it with the
    smallest noise that keeps ε <= target after the planned total steps of the run.
    """

    noise_multiplier: float = field(default=1.0, metadata={"help": "σ of the Gaussian noise"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "per-example clipping norm C"})
    delta: float = field(default=1e-5, metadata={"help": "δ of the reported (ε, δ)"})
    target_epsilon: float = field(default=0.0, metadata={"help": "0 = use noise_multiplier"})
    poisson_sampling: bool = field(default=True, metadata={
        "help": "must stay true in a run: the RDP accountant assumes Poisson sampling"})

    def validate(self) -> None:
        check(self.noise_multiplier >= 0, "noise_multiplier", "must be >= 0",
              self.noise_multiplier)
        check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0", self.max_grad_norm)
        check(0 < self.delta < 1, "delta", "must be in (0, 1)", self.delta)
        check(self.target_epsilon >= 0, "target_epsilon", "must be >= 0", self.target_epsilon)
        check(self.poisson_sampling, "poisson_sampling",
              "must be true: the reported ε assumes Poisson sampling", self.poisson_sampling)


def sample_rate(num_records: int, batch_size: int) -> float:
    """The Poisson sample rate q = B / N (capped at 1) that training and accounting share."""
    return min(1.0, batch_size / num_records)


def planned_steps(cfg: Any) -> int:
    """DP steps planned over the whole run (for a target ε)."""
    return cfg.train.steps * cfg.rounds


def dp_sgd_step(job: Any) -> dict[str, float]:
    """Train ``job.model`` with DP-SGD on Poisson batches; keep the accountant in the state."""
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import TensorDataset

    from fedprivacy.deadline import checkpoint
    from fedprivacy.privacy.dp import make_private
    from fedprivacy.training import make_optimizer, tail_mean

    tc, settings = job.cfg.train, job.settings(METHOD)
    data = job.res.train_set
    dataset = TensorDataset(data["input_ids"], data["attention_mask"], data["labels"])
    q = sample_rate(len(dataset), tc.batch_size)
    secret = job.secret_generator()
    loader = DPDataLoader(dataset, sample_rate=q, generator=secret)
    history = job.state_get(STATE_KEY) or _replayed_history(job, q)
    trainer = make_private(job.model, make_optimizer(job.model, tc), q, settings, history,
                           batch_size=tc.batch_size, total_steps=planned_steps(job.cfg),
                           noise_generator=secret)
    device = next(job.model.parameters()).device
    losses: list[float] = []
    while len(losses) < tc.steps:
        for batch in loader:
            checkpoint()  # the round's deadline
            losses.append(trainer.step([t.to(device) for t in batch]))
            if len(losses) == tc.steps:
                break
    trainer.close()
    job.model.eval()
    job.state_put(STATE_KEY, trainer.export_state())
    return {"loss": tail_mean(losses), "epsilon": trainer.epsilon(), "delta": settings.delta,
            "noise_multiplier": trainer.noise_multiplier}


def _replayed_history(job: Any, q: float) -> dict[str, list[float | int]] | None:
    """The accountant history of rounds 1..r-1 when the node's state is gone (a resumed run
    starts fresh simulation nodes): every round ran the same steps at the same noise and
    sample rate, so the history is one entry. It assumes the client trained in every earlier
    round, an upper bound on ε when clients are sampled."""
    if job.server_round <= 1:
        return None
    from fedprivacy.privacy.dp import resolve_noise_multiplier

    sigma = resolve_noise_multiplier(job.settings(METHOD), q, planned_steps(job.cfg))
    return {"noise_multiplier": [sigma], "sample_rate": [q],
            "steps": [job.cfg.train.steps * (job.server_round - 1)]}


def dp_preflight(cfg: Any, probe: Any) -> None:
    """A target ε must be reachable at the run's sample rate and planned steps (checked by
    each node when the clients' data is only there)."""
    from fedprivacy.privacy.dp import resolve_noise_multiplier

    if probe.data is None:
        return
    q = sample_rate(len(probe.data.train), cfg.train.batch_size)
    resolve_noise_multiplier(cfg.client.dp, q, planned_steps(cfg))


METHOD = register(Method(
    name="dp_sgd", kind="train", section="dp",
    help="DP-SGD (Opacus): per-example clipping, Gaussian noise, RDP accounting over rounds",
    settings=DPConfig, client_step=dp_sgd_step, preflight=dp_preflight))
