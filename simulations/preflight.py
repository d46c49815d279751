"""Checks that run before a simulation starts, so bad input fails fast and writes nothing.

They resolve ``train.device``, build what the clients would build (tokenizer, model, every
client's data) and check it: every client needs training and validation records and every
record (canaries included) must fit ``data.max_length``. Then each configured method's
``preflight(cfg, probe)`` (`fedprivacy.methods.registry`) checks what it needs, e.g. DEPN a
supported architecture, DP-SGD a reachable ε target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprivacy import adapters
from fedprivacy.config import ConfigError, ExperimentConfig
from fedprivacy.data.encoding import encode_records
from fedprivacy.data.federated import (
    CORPUS_SOURCES,
    ClientData,
    DataConfig,
    build_client_data,
    build_server_data,
    is_node_local,
    is_pooled,
    pooled_client_data,
)
from fedprivacy.data.loaders import check_file
from fedprivacy.methods import registry
from fedprivacy.models import build_model, load_tokenizer, resolve_device
from fedprivacy.tracking import check as check_tracking

NEEDED = ("train", "validation")  # splits every client encodes (clients/job.py)
SHOWN = 8  # clients listed in a split-size error


def _sizes(data: ClientData) -> str:
    return ", ".join(f"{s}={len(getattr(data, s))}" for s in ("train", "validation", "test"))


def _count(data: ClientData) -> int:
    return len(data.train) + len(data.validation) + len(data.test)


def _source_key(cfg: DataConfig) -> str:
    """The key to blame for clients left without records."""
    if cfg.source == "files":
        return f"data.path ({cfg.path})"
    if cfg.source in CORPUS_SOURCES:
        return "data.pii_records"
    if cfg.partition == "dirichlet":
        return f"data.dirichlet_alpha={cfg.dirichlet_alpha} (data.partition=dirichlet)"
    return "data.train_per_client / data.val_per_client"


def check_split_sizes(cfg: ExperimentConfig, clients: list[ClientData]) -> None:
    """Every client needs at least one training and one validation record; name the key,
    the number of records and what each client got."""
    short = [i for i, data in enumerate(clients) if min(len(getattr(data, s)) for s in NEEDED) == 0]
    if not short:
        return
    d, num = cfg.data, cfg.simulation.num_clients
    pool = f" (the pool holds {sum(map(_count, clients))} records)" if len(clients) == num else ""
    got = "; ".join(f"client {i}: {_sizes(clients[i])}" for i in short[:SHOWN])
    if len(short) > SHOWN:
        got += f"; ... ({len(short) - SHOWN} more)"
    raise ValueError(
        f"{_source_key(d)}: too few records for simulation.num_clients={num}{pool}: clients "
        f"{short} get no training or no validation record ({got}; each client's part is split "
        f"in the ratio train:validation:test = {d.train_per_client}:{d.val_per_client}:"
        f"{d.test_per_client}, from data.train_per_client, data.val_per_client and "
        "data.test_per_client). Give more records or fewer clients, or change that ratio")


def client_data(cfg: ExperimentConfig) -> list[ClientData]:
    """Every client's data, built once, as `build_client_data` builds it in each client.

    Pool sources (files, tasks + iid/dirichlet) load and partition the pool once here, not
    once per client (which is quadratic in the clients). Clients that generate their own data
    (pii, tasks + by_task) all get the configured split sizes: client 0 stands for them. An
    error that names no key is put on the data source's key.
    """
    d, num, seed = cfg.data, cfg.simulation.num_clients, cfg.seed
    if is_node_local(d):  # every client's own file (none here: a deployment's nodes hold them)
        return [build_client_data(d, i, num, seed) for i in range(len(d.node_paths))]
    try:
        if not is_pooled(d):
            return [build_client_data(d, 0, num, seed)]
        return pooled_client_data(d, num, seed)
    except ValueError as err:
        if str(err).startswith("data."):
            raise
        raise ValueError(f"{_source_key(d)}: cannot split the data across "
                         f"simulation.num_clients={num}: {err}") from err


@dataclass
class Probe:
    """What the first client would build: a method's ``preflight(cfg, probe)`` checks it."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    data: ClientData | None  # None: the clients' data is on the deployment's nodes


def preflight(cfg: ExperimentConfig, deployment: bool = False) -> None:
    """Raise a clear error (naming the key) if this config cannot run; write nothing. In a
    ``deployment`` the SuperNodes may hold the clients' files (node-local data): then the
    clients' checks are theirs."""
    check_tracking(cfg.tracking)  # the backend is importable (a store is reached after the run)
    resolve_device(cfg.train.device)  # the server and every client move the model there
    tokenizer = load_tokenizer(cfg.model)  # a bad model folder is named here
    # model.lora_targets that match no module are named here
    model = adapters.wrap(build_model(cfg.model, tokenizer, cfg.seed), cfg.model, cfg.seed)
    num = cfg.simulation.num_clients
    clients = client_data(cfg)
    if not clients and not deployment:
        raise ConfigError("data.path: empty (node-local data): a simulation needs "
                          "data.node_paths (one file per client); in a deployment each "
                          "SuperNode names its own (--node-config data-path=...)")
    if clients:
        check_split_sizes(cfg, clients)
    for i, data in enumerate(clients):
        for split in NEEDED:
            try:
                encode_records(tokenizer, getattr(data, split), cfg.data.max_length)
            except ValueError as err:
                raise ValueError(f"data.max_length: client {i}'s {split} split: {err}") from err
    server = cfg.server
    if server.eval_source == "file":  # the cheap checks, under the server's own key
        check_file(Path(server.eval_path).expanduser(), "server.eval_path")
    if not build_server_data(cfg.data, server.eval_source, server.eval_path,
                             server.eval_records, num, cfg.seed):
        raise ValueError(f"server.eval_source={server.eval_source!r}: the server's evaluation "
                         "set is empty")
    probe = Probe(tokenizer, model, clients[0] if clients else None)
    for method in registry.configured(cfg):
        if method.preflight is not None:
            method.preflight(cfg, probe)
