"""The client's privacy steps: DP-SGD, swing distillation (and plain KD, its baseline), DEPN.

Each works on the `ClientJob`'s model in place and returns its metrics. Private records are
used here, inside the client, and never leave it.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from flwr.app import MetricRecord
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedModel

from clients.job import ClientJob
from fedprivacy import sites
from fedprivacy.privacy.depn import depn, neuron_ids
from fedprivacy.privacy.detectors import ModelScoreDetector, PatternDetector, SpanDetector
from fedprivacy.privacy.dp import make_private, resolve_noise_multiplier
from fedprivacy.privacy.swing import kd_loss, swing_distillation_loss, swing_temperatures
from fedprivacy.training import endless_batches, make_optimizer, sft, train_loop

DP_STATE_KEY = "dp-accountant"


def tail_mean(losses: list[float]) -> float:
    """The loss a step reports: the mean of its last five training steps."""
    return sum(losses[-5:]) / len(losses[-5:])


# --- DP-SGD -------------------------------------------------------------------------------
def dp_sgd_step(job: ClientJob) -> dict[str, float]:
    """Opacus DP-SGD; the RDP accountant lives in the node's ``Context.state`` across rounds,
    so the reported ε covers every round this client has trained so far."""
    tc, dc = job.cfg.train, job.cfg.client.dp
    data = job.res.train_set
    dataset = TensorDataset(data["input_ids"], data["attention_mask"], data["labels"])
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(job.seed))
    state = job.state.get(DP_STATE_KEY)
    history = dict(state) if state is not None else _replayed_history(job, len(loader))
    trainer = make_private(job.model, make_optimizer(job.model, tc), loader, dc, history,
                           total_steps=tc.steps * job.cfg.rounds,
                           noise_generator=torch.Generator().manual_seed(job.seed + 1))
    device = next(job.model.parameters()).device
    losses: list[float] = []
    while len(losses) < tc.steps:
        for batch in trainer.data_loader:
            losses.append(trainer.step([t.to(device) for t in batch]))
            if len(losses) == tc.steps:
                break
    trainer.close()
    job.model.eval()
    job.state[DP_STATE_KEY] = MetricRecord(trainer.export_state())
    return {"loss": tail_mean(losses), "epsilon": trainer.epsilon(), "delta": dc.delta,
            "noise_multiplier": trainer.noise_multiplier}


def _replayed_history(job: ClientJob, batches: int) -> dict[str, list[float | int]] | None:
    """The accountant history of rounds 1..r-1 when the node's state is gone (a resumed run
    starts fresh simulation nodes): every round ran the same steps at the same noise and
    sample rate, so the history is one entry. It assumes the client trained in every earlier
    round, an upper bound on ε when clients are sampled."""
    if job.server_round <= 1:
        return None
    dc, tc = job.cfg.client.dp, job.cfg.train
    sigma = resolve_noise_multiplier(dc, 1 / batches, tc.steps * job.cfg.rounds)
    return {"noise_multiplier": [sigma], "sample_rate": [1 / batches],
            "steps": [tc.steps * (job.server_round - 1)]}


# --- distillation: swing and plain KD -----------------------------------------------------
def _teacher(job: ClientJob) -> PreTrainedModel:
    """A local teacher: the received model fine-tuned on the client's private data."""
    teacher = copy.deepcopy(job.model)
    steps = job.cfg.client.swing.teacher_steps
    sft(teacher, job.res.train_set, replace(job.cfg.train, steps=steps), job.seed)
    return teacher.eval()


def _likelihood(job: ClientJob, teacher: PreTrainedModel, batch: dict[str, torch.Tensor]
                ) -> torch.Tensor:
    """Per-token privacy likelihood from ``client.swing.detector``."""
    name = job.cfg.client.swing.detector
    if name == "span":
        detector = SpanDetector()
    elif name == "pattern":
        detector = PatternDetector(job.res.tokenizer)
    elif name == "model_score":
        detector = ModelScoreDetector(teacher, job.model)
    else:
        raise ValueError(f"client.swing.detector: unknown {name!r}; "
                         "choose span, pattern or model_score")
    return detector(batch["input_ids"], batch["attention_mask"], batch["private_mask"])


def _distill(job: ClientJob, swing: bool) -> dict[str, float]:
    sc, tc = job.cfg.client.swing, job.cfg.train
    teacher = _teacher(job)
    generator = torch.Generator().manual_seed(job.seed + 2)

    def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits
        student_logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
        if not swing:
            return kd_loss(student_logits, teacher_logits, batch["labels"], sc.t0, sc.alpha)
        likelihood = _likelihood(job, teacher, batch)
        return swing_distillation_loss(student_logits, teacher_logits, batch["labels"],
                                       swing_temperatures(likelihood, sc), sc, generator,
                                       likelihood)

    losses = train_loop(job.model, endless_batches(job.res.train_set, tc.batch_size, job.seed),
                        sc.student_steps, make_optimizer(job.model, tc), tc.max_grad_norm, loss_fn)
    return {"loss": tail_mean(losses)}


def swing_step(job: ClientJob) -> dict[str, float]:
    """Swing distillation: per-token temperature from the privacy likelihood, noisy targets."""
    return _distill(job, swing=True)


def kd_step(job: ClientJob) -> dict[str, float]:
    """Plain distillation from the same local teacher (fixed T = ``client.swing.t0``)."""
    return _distill(job, swing=False)


# --- DEPN ---------------------------------------------------------------------------------
def depn_step(job: ClientJob) -> dict[str, float]:
    """Detect privacy neurons on the client's private records and zero them before sending."""
    dc = job.cfg.client.depn
    data = job.res.train_set
    private = data["private_mask"].any(dim=1)
    rows = torch.nonzero(private).flatten()
    if len(rows) == 0:
        return {"edited": 0.0, "records": 0.0, "neurons": []}
    # identical private records (a canary repeated k times) vote once each
    unique: dict[tuple[int, ...], int] = {}
    for row in rows.tolist():
        unique.setdefault(tuple(data["input_ids"][row].tolist()), row)
    chosen = torch.tensor(list(unique.values())[:dc.max_records])
    device = next(job.model.parameters()).device
    rows = {k: data[k][chosen].to(device) for k in ("input_ids", "private_mask", "attention_mask")}
    _, neurons = depn(job.model, rows["input_ids"], rows["private_mask"], top_z=dc.top_z,
                      attention_mask=rows["attention_mask"], steps=dc.steps,
                      threshold_ratio=dc.threshold_ratio)
    return {"edited": float(len(neurons.neurons)), "records": float(len(chosen)),
            "neurons": neuron_ids(neurons.neurons, sites.ffn_dim(job.model))}
