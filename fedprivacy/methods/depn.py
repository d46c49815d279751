"""``depn``: privacy neurons found by integrated gradients and zeroed (METHODS.md §4).

Client: after local training, detect the privacy neurons of the client's private records and
zero them before the update leaves; declare their ids (``depn.neurons``: layer·d_ff + index,
metadata about the model, no data, best ranked first). Server: `NeuronEditMerge` zeroes the
union of the declared neurons in the aggregate (averaging would bring a zeroed column back to
(n−1)/n of its size; the project's choice, DEPN itself is centralised), with ``union_budget``
only the part of it that the server's own PII-free dev text says is affordable; the saved
global model records exactly the last round's union (`finish`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedprivacy.methods.registry import Method, check, check_choice, register

NEURONS_KEY = "depn.neurons"  # train-reply metric: the zeroed neurons' flat ids, best first
UNION_KEY = "depn_neurons"  # per-round server record: the union zeroed in the aggregate
WHEN = ("every", "last")
GUARD_SEARCHES = ("greedy", "prefix")  # fedprivacy.privacy.depn.guard_utility


@dataclass
class DEPNConfig:
    """DEPN settings (``client.depn``)."""

    top_z: int = field(default=20, metadata={"help": "neurons zeroed (the most voted z)"})
    ig_steps: int = field(default=20, metadata={"help": "integrated-gradients steps m"})
    threshold_ratio: float = field(default=0.1, metadata={
        "help": "per-record candidates: attribution >= ratio x the record's maximum"})
    max_records: int = field(default=16, metadata={
        "help": "private records used for detection per round"})
    contrast: int = field(default=1, metadata={
        "help": "counterfactuals per record (private tokens resampled) whose attribution is "
                "subtracted; 0 = the paper's plain attribution"})
    utility_budget: float = field(default=0.05, metadata={
        "help": "relative perplexity increase on the client's PII-free validation text the "
                "zeroed neurons may cost (neurons beyond it are dropped); negative = no guard"})
    when: str = field(default="every", metadata={
        "help": "rounds whose update is edited: every | last (only the last round's, as the "
                "paper edits the trained model once; the server then receives the earlier "
                "rounds' updates unedited)"})
    guard_search: str = field(default="greedy", metadata={
        "help": "how both guards choose within their budget: greedy (one neuron at a time in "
                "rank order, 1 + z evaluations) | prefix (the longest affordable top-k, by "
                "bisection, 2 + log2 z evaluations: for models where an evaluation costs "
                "seconds)"})
    union_budget: float = field(default=-1.0, metadata={
        "help": "relative perplexity increase on the server's own PII-free dev text (disjoint "
                "from its eval text) the merged union may cost: the server keeps the clients' "
                "neurons in rank order, round robin, while it holds; negative = no server guard"})

    def validate(self) -> None:
        check(self.top_z >= 1, "top_z", "must be >= 1", self.top_z)
        check(self.ig_steps >= 1, "ig_steps", "must be >= 1", self.ig_steps)
        check(0 <= self.threshold_ratio <= 1, "threshold_ratio", "must be in [0, 1]",
              self.threshold_ratio)
        check(self.max_records >= 1, "max_records", "must be >= 1", self.max_records)
        check(self.contrast >= 0, "contrast", "must be >= 0", self.contrast)
        check_choice(self.when, "when", WHEN)
        check_choice(self.guard_search, "guard_search", GUARD_SEARCHES)


def depn_step(job: Any) -> dict[str, float | list[int]]:
    """Detect privacy neurons on the client's private records, keep those within the utility
    budget on its PII-free validation text, and zero them before sending; with ``when: last``
    only in the run's last round (earlier updates leave unedited and declare no neurons)."""
    from fedprivacy import adapters, sites
    from fedprivacy.privacy.depn import apply_depn, client_privacy_neurons, neuron_ids

    settings: DEPNConfig = job.settings(METHOD)
    if settings.when == "last" and not job.last_round:
        return {"edited": 0.0, "detected": 0.0, "records": 0.0, "neurons": []}
    model = adapters.base_of(job.model)  # with an adapter: its base's down projections
    neurons, detected, records = client_privacy_neurons(
        model, job.res.train_set, job.res.val_set, settings, job.cfg.train.batch_size, job.seed)
    apply_depn(model, neurons)
    return {"edited": float(len(neurons.neurons)), "detected": float(detected),
            "records": float(records), "neurons": neuron_ids(neurons.neurons, sites.ffn_dim(model))}


def depn_finish(model: Any, rounds: list[dict]) -> None:
    """Zero the last round's union in the saved model, so that its edit record (one entry,
    `fedprivacy.editing`) describes exactly the zeroed columns its weights carry."""
    from fedprivacy import sites
    from fedprivacy.editing import scale_neurons
    from fedprivacy.privacy.depn import neurons_by_layer

    last = next((r for r in reversed(rounds) if r.get("round", 0) > 0), None)
    ids = (last or {}).get("strategy", {}).get(UNION_KEY, [])
    if ids:
        scale_neurons(model, neurons_by_layer(ids, sites.ffn_dim(model)), 0.0)


def depn_preflight(cfg: Any, probe: Any) -> None:
    """DEPN needs the FFN site table of the model's architecture and, with an adapter, the
    down projections frozen (not in ``model.lora_targets``)."""
    from fedprivacy import adapters, sites

    sites.family(adapters.base_of(probe.model))  # UnsupportedArchitectureError names the class
    if adapters.has_adapter(probe.model):
        adapters.check_frozen_ffn(probe.model)


METHOD = register(Method(
    name="depn", kind="post",
    help="DEPN: zero the privacy neurons (integrated gradients) before the update leaves",
    settings=DEPNConfig, client_step=depn_step,
    server="fedprivacy.strategies.depn_merge:wrap", finish=depn_finish,
    preflight=depn_preflight, wire_keys=(NEURONS_KEY,)))
