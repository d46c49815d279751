"""One client's data (or the server's held-out set) from a data config, the same in every process."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fedprivacy.data.concept_world import ConceptWorld, ConceptWorldConfig
from fedprivacy.data.conflicts import FactsConfig, FactWorld
from fedprivacy.data.loaders import load_records
from fedprivacy.data.partition import SCHEMES, partition_records
from fedprivacy.data.pii import (
    Canary,
    heldout_canaries,
    make_canaries,
    pii_corpus,
    public_corpus,
)
from fedprivacy.data.records import Record, derive_seed, make_record
from fedprivacy.data.tasks import TASKS, TaskSpec, get_task, task_splits

SOURCES = ("tasks", "pii", "public", "task_text", "files", "facts", "concepts")
CORPUS_SOURCES = ("pii", "public", "task_text")  # each client generates its own corpus (any partition)


@dataclass
class CanaryConfig:
    count: int = 2        # canaries per client
    repeats: int = 10     # insertions of each canary in that client's corpus
    digits: int = 6       # secret length
    heldout: int = 20     # unseen canaries of the same format: the membership attack's non-members


NODE_DATA_KEY = "data-path"  # a SuperNode's --node-config key that names its own data file


@dataclass
class DataConfig:
    # tasks | pii | public (pii's PII-free half only: public pretraining) | task_text (the
    # tasks' prompts without answers: unlabelled pretraining text) | files |
    # facts (data.conflicts) | concepts (data.concept_world)
    source: str = "tasks"
    tasks: list[str] = field(default_factory=list)   # empty = all tasks in TASKS order
    partition: str = "by_task"   # by_task | iid | dirichlet
    dirichlet_alpha: float = 0.5
    train_per_client: int = 64
    val_per_client: int = 32
    test_per_client: int = 32
    pii_records: int = 200       # corpus sentences per client when source=pii
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    facts: FactsConfig = field(default_factory=FactsConfig)
    concepts: ConceptWorldConfig = field(default_factory=ConceptWorldConfig)
    # source=files: a JSONL/CSV/Parquet file every client cuts its part from; "" = node-local
    # data, each deployment node names its own file (--node-config "data-path=...")
    path: str = ""
    # source=files, path "": client i's own file, node_paths[i] (node-local data in a
    # simulation; a deployment node's --node-config data-path goes before it)
    node_paths: list[str] = field(default_factory=list)
    prompt_field: str = ""
    completion_field: str = ""
    text_field: str = "text"
    max_length: int = 64


@dataclass
class ClientData:
    """What one client holds: its splits, its task (one-task clients only) and its canaries."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]
    task: TaskSpec | None = None
    canaries: list[Canary] = field(default_factory=list)
    heldout_canaries: list[Canary] = field(default_factory=list)  # in no corpus (membership)


def task_names(cfg: DataConfig) -> list[str]:
    """The configured tasks (all tasks when empty), each checked to exist."""
    names = list(cfg.tasks) or list(TASKS)
    for name in names:
        get_task(name)
    return names


def _check(cfg: DataConfig, partition_id: int, num_partitions: int) -> None:
    """Reject bad arguments before generating anything, naming the offending one (for library
    callers; a run's config is checked against the same tables by `fedprivacy.config`)."""
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    if cfg.partition not in SCHEMES:
        raise ValueError(f"data.partition must be one of {', '.join(SCHEMES)}, got {cfg.partition!r}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if cfg.train_per_client < 1 or min(cfg.val_per_client, cfg.test_per_client) < 0:
        raise ValueError("data.train_per_client must be positive and val/test_per_client non-negative")


def _split_by_ratio(records: list[Record], cfg: DataConfig) -> tuple[list[Record], ...]:
    """Cut a (shuffled) partition into train/validation/test in the configured per-client ratio."""
    total = cfg.train_per_client + cfg.val_per_client + cfg.test_per_client
    n_val = round(len(records) * cfg.val_per_client / total)
    n_test = round(len(records) * cfg.test_per_client / total)
    n_train = len(records) - n_val - n_test
    return records[:n_train], records[n_train : n_train + n_val], records[n_train + n_val :]


def _pool(cfg: DataConfig, num_partitions: int, seed: int) -> list[Record]:
    """All clients' records before partitioning: task examples or the user's file."""
    if cfg.source == "files":
        if not cfg.path:
            raise ValueError(f"data.path is empty (node-local data), so every node names its "
                             f"own file: start its SuperNode with --node-config \"partition-id="
                             f"<i> num-partitions=<n> {NODE_DATA_KEY}=/abs/path.jsonl\" (in a "
                             "simulation: data.node_paths)")
        return load_records(
            cfg.path, cfg.prompt_field or None, cfg.completion_field or None, cfg.text_field
        )
    total = (cfg.train_per_client + cfg.val_per_client + cfg.test_per_client) * num_partitions
    if cfg.source == "facts":
        world = FactWorld.build(cfg.facts.entities, seed)
        return world.corpus(total, cfg.facts, derive_seed(seed, "pool"))
    if cfg.source == "concepts":
        return ConceptWorld(cfg.concepts).corpus(total, derive_seed(seed, "pool"))
    return task_examples(task_names(cfg), total, derive_seed(seed, "pool"))


def task_examples(names: list[str], n: int, seed: int) -> list[Record]:
    """``n`` examples of the tasks ``names``, split evenly over them (the first ``n mod T``
    tasks one more), task after task."""
    share, extra = divmod(n, len(names))
    return [r for t, name in enumerate(names)
            for r in get_task(name).generate(share + (t < extra), seed)]


def _task_client(cfg: DataConfig, partition_id: int, seed: int) -> ClientData:
    """Client i's own task, tasks[i mod T], with its own splits."""
    names = task_names(cfg)
    spec = get_task(names[partition_id % len(names)])
    splits = task_splits(
        spec.name, cfg.train_per_client, cfg.val_per_client, cfg.test_per_client,
        derive_seed(seed, "client", partition_id),
    )
    return ClientData(splits["train"], splits["validation"], splits["test"], task=spec)


def _public_splits(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record], list[Record]]:
    """``pii_records`` PII-free sentences to train on, then the validation and test ones."""
    n_held_out = cfg.val_per_client + cfg.test_per_client
    public = public_corpus(cfg.pii_records + n_held_out, seed)
    held_out = public[:n_held_out]
    return public[n_held_out:], held_out[: cfg.val_per_client], held_out[cfg.val_per_client :]


def _pii_client(cfg: DataConfig, partition_id: int, seed: int) -> ClientData:
    """Client i's text: ``pii_records`` PII sentences with its canaries, mixed with as many
    ordinary (public-style) sentences; validation/test are held-out PII-free sentences."""
    canaries = make_canaries(cfg.canary.count, cfg.canary.digits, seed, partition_id)
    private = pii_corpus(cfg.pii_records, canaries, cfg.canary.repeats, derive_seed(seed, "pii", partition_id))
    public, validation, test = _public_splits(cfg, derive_seed(seed, "public", partition_id))
    unseen = heldout_canaries(cfg.canary.heldout, cfg.canary.digits, seed, partition_id, canaries)
    return ClientData(private + public, validation, test, canaries=canaries, heldout_canaries=unseen)


def _public_client(cfg: DataConfig, partition_id: int, seed: int) -> ClientData:
    """Client i's PII-free text alone, drawn with a seed of its own (a public corpus to pretrain
    on before the private fine-tuning of ``pii``; no PII, no canary)."""
    return ClientData(*_public_splits(cfg, derive_seed(seed, "public-pretraining", partition_id)))


def task_text(cfg: DataConfig, n: int, seed: int) -> list[Record]:
    """``n`` unlabelled texts of the configured tasks, split evenly over them: each a task's
    prompt (instruction, input, the answer cue) as the text to model, without its answer."""
    return [make_record("", r["prompt"], f"{r['task']}-text")
            for r in task_examples(task_names(cfg), n, derive_seed(seed, "task-text"))]


def _task_text_client(cfg: DataConfig, partition_id: int, seed: int) -> ClientData:
    """Client i's unlabelled task text, drawn with a seed of its own and shuffled, cut into
    ``train_per_client`` texts, then its validation and test ones: pretraining text that holds
    no label."""
    n_train, n_val = cfg.train_per_client, cfg.val_per_client
    client_seed = derive_seed(seed, "task-text-client", partition_id)
    texts = task_text(cfg, n_train + n_val + cfg.test_per_client, client_seed)
    random.Random(client_seed).shuffle(texts)
    return ClientData(texts[:n_train], texts[n_train:n_train + n_val], texts[n_train + n_val:])


def build_client_data(cfg: DataConfig, partition_id: int, num_partitions: int, seed: int) -> ClientData:
    """The data of client `partition_id`: identical for identical arguments in any process.

    tasks + by_task: task `tasks[i mod T]`, generated for this client alone. tasks + iid/dirichlet
    and files: one pool partitioned across clients, this client's part cut into train/validation/
    test in the configured ratio (`task` is None). pii: its own corpus and canaries (any partition);
    public: its own PII-free sentences; task_text: its own unlabelled task prompts.
    """
    _check(cfg, partition_id, num_partitions)
    if cfg.source == "files" and cfg.node_paths:
        return node_file_client_data(cfg, cfg.node_paths[partition_id], seed,
                                     key=f"data.node_paths[{partition_id}]")
    if cfg.source == "pii":
        return _pii_client(cfg, partition_id, seed)
    if cfg.source == "public":
        return _public_client(cfg, partition_id, seed)
    if cfg.source == "task_text":
        return _task_text_client(cfg, partition_id, seed)
    if cfg.source == "tasks" and cfg.partition == "by_task":
        return _task_client(cfg, partition_id, seed)
    return pooled_client_data(cfg, num_partitions, seed)[partition_id]


def node_file_client_data(cfg: DataConfig, path: str, seed: int,
                          key: str = f"node_config {NODE_DATA_KEY}") -> ClientData:
    """A node's own data file (``data-path`` of its node config, or ``data.node_paths[i]``,
    named by ``key``): every record is this client's, shuffled (seeded) and cut into
    train/validation/test in the configured ratio. Needs ``data.source: files``."""
    if cfg.source != "files":
        raise ValueError(f"{key}={path!r} needs data.source=files in the run config "
                         f"(got {cfg.source!r})")
    records = load_records(path, cfg.prompt_field or None, cfg.completion_field or None,
                           cfg.text_field, key=key)
    [shuffled] = partition_records(records, 1, "iid", derive_seed(seed, "node-file"))
    return ClientData(*_split_by_ratio(shuffled, cfg))


def is_pooled(cfg: DataConfig) -> bool:
    """Whether clients cut their data from one shared pool (files, tasks + iid/dirichlet)."""
    return not (cfg.source in CORPUS_SOURCES
                or (cfg.source == "tasks" and cfg.partition == "by_task")
                or is_node_local(cfg))


def is_node_local(cfg: DataConfig) -> bool:
    """Whether every client holds a file of its own (``data.path`` empty, source files)."""
    return cfg.source == "files" and not cfg.path


def pooled_client_data(cfg: DataConfig, num_partitions: int, seed: int) -> list[ClientData]:
    """Every client's data of a pooled source, the pool loaded and partitioned once."""
    parts = partition_records(_pool(cfg, num_partitions, seed), num_partitions, cfg.partition,
                              seed, cfg.dirichlet_alpha)
    return [ClientData(*_split_by_ratio(part, cfg)) for part in parts]


def server_tasks(cfg: DataConfig, num_partitions: int) -> list[str]:
    """The tasks the clients of a run hold, from the config alone (with ``by_task``, client i
    holds ``tasks[i mod T]``)."""
    names = task_names(cfg)
    if cfg.partition == "by_task":
        return names[:min(len(names), num_partitions)]
    return names


def build_server_data(cfg: DataConfig, source: str, path: str, n: int, num_partitions: int,
                      seed: int, role: str = "server") -> list[Record]:
    """The server's own held-out set: never a client's data (`ServerConfig`). ``role`` names
    the set in the seed (``server``: the eval set; another role draws another set).

    ``tasks``: ``n`` examples of the clients' tasks generated with the server's own seed
    (with ``data.source=task_text``: their unlabelled prompts);
    ``public``: ``n`` generated PII-free sentences; ``file``: the records of ``path`` (a file
    only the server reads, with the data section's field names); ``auto``: ``tasks`` for
    ``data.source=tasks``, the fact world's text drawn with the server's seed for
    ``data.source=facts`` (the world is public, `fedprivacy.data.conflicts`) and likewise the
    emotion world's for ``data.source=concepts``, else ``public``.
    """
    if source == "auto":
        source = cfg.source if cfg.source in ("tasks", "task_text", "facts", "concepts") else "public"
    server_seed = derive_seed(seed, role)
    if source == "facts":
        return FactWorld.build(cfg.facts.entities, seed).corpus(n, cfg.facts, server_seed)
    if source == "concepts":
        return ConceptWorld(cfg.concepts).corpus(n, server_seed)
    if source == "file":
        return load_records(path, cfg.prompt_field or None, cfg.completion_field or None,
                            cfg.text_field, key="server.eval_path")
    if source == "public":
        return public_corpus(n, server_seed)
    if source == "task_text":
        return task_text(cfg, n, server_seed)
    return task_examples(server_tasks(cfg, num_partitions), n, server_seed)
