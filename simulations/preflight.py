"""Checks that run before a simulation starts, so bad input fails fast and writes nothing.

They build what the first client would build (tokenizer, model, its data) and ask each
configured method whether it can work with it: DEPN needs a supported architecture, every
record (canaries included) must fit the context, a DP-SGD ε target must be reachable.
"""

from __future__ import annotations

from fedprivacy import sites
from fedprivacy.config import ExperimentConfig
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import build_client_data
from fedprivacy.models import build_model, load_tokenizer


def preflight(cfg: ExperimentConfig) -> None:
    """Raise a clear error (naming the key) if this config cannot run; write nothing."""
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, cfg.seed)
    if "depn" in cfg.client.steps:
        sites.family(model)  # UnsupportedArchitectureError names the model class
    data = build_client_data(cfg.data, 0, cfg.simulation.num_clients, cfg.seed)
    for split in ("train", "validation"):
        try:
            encode_records(tokenizer, getattr(data, split), cfg.data.max_length)
        except ValueError as err:
            raise ValueError(f"data.max_length: client 0's {split} split: {err}") from err
    if "dp_sgd" in cfg.client.steps:
        from fedprivacy.privacy.dp import resolve_noise_multiplier

        sample_rate = min(1.0, cfg.train.batch_size / len(data.train))
        resolve_noise_multiplier(cfg.client.dp, sample_rate, cfg.train.steps * cfg.rounds)
