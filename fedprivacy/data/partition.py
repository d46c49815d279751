"""Split records across clients: IID, Dirichlet over tasks (flwr-datasets), or one task per client."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from fedprivacy.data.records import Record, derive_seed

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

SCHEMES = ("iid", "dirichlet", "by_task")


def _flwr_partitions(
    records: list[Record], partitioner: Partitioner, num_partitions: int
) -> list[list[Record]]:
    """Apply a flwr-datasets partitioner to a Dataset of record indices and tasks."""
    from datasets import Dataset  # heavy import, only when partitioning

    partitioner.dataset = Dataset.from_dict(
        {"index": list(range(len(records))), "task": [r["task"] for r in records]}
    )
    # one bulk read of the index column per partition (row-by-row access is slow)
    return [[records[i] for i in partitioner.load_partition(p).to_dict()["index"]]
            for p in range(num_partitions)]


def _iid(records: list[Record], num_partitions: int, seed: int) -> list[list[Record]]:
    """Shuffle with the seed, then cut into near-equal contiguous shards (IidPartitioner)."""
    from flwr_datasets.partitioner import IidPartitioner

    shuffled = list(records)
    random.Random(derive_seed(seed, "iid")).shuffle(shuffled)
    return _flwr_partitions(shuffled, IidPartitioner(num_partitions), num_partitions)


def _dirichlet(
    records: list[Record], num_partitions: int, seed: int, alpha: float, min_partition_size: int
) -> list[list[Record]]:
    """Per task, Dirichlet(alpha) proportions over clients (DirichletPartitioner)."""
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions, "task", alpha, min_partition_size=min_partition_size, seed=seed
    )
    return _flwr_partitions(records, partitioner, num_partitions)


def _by_task(records: list[Record], num_partitions: int, seed: int) -> list[list[Record]]:
    """Client i gets task i mod T (tasks in order of first appearance); clients sharing a task split it."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if num_partitions < len(tasks):
        raise ValueError(
            f"num_partitions={num_partitions} is fewer than the {len(tasks)} tasks in the records; "
            "by_task gives every task at least one client"
        )
    parts: list[list[Record]] = [[] for _ in range(num_partitions)]
    for t, task in enumerate(tasks):
        owners = list(range(t, num_partitions, len(tasks)))
        shards = _iid([r for r in records if r["task"] == task], len(owners), derive_seed(seed, task))
        for owner, shard in zip(owners, shards):
            parts[owner] = shard
    return parts


def partition_records(
    records: list[Record],
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    min_partition_size: int = 1,
) -> list[list[Record]]:
    """`num_partitions` lists of records under `scheme` (iid, dirichlet, by_task), deterministic in seed.

    `alpha` and `min_partition_size` apply to the Dirichlet scheme (over the records' tasks).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if not 1 <= num_partitions <= len(records):
        raise ValueError(
            f"num_partitions must be between 1 and the {len(records)} records, got {num_partitions}"
        )
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if min_partition_size < 0:
        raise ValueError(f"min_partition_size must be non-negative, got {min_partition_size}")
    if scheme == "iid":
        return _iid(records, num_partitions, seed)
    if scheme == "dirichlet":
        return _dirichlet(records, num_partitions, seed, alpha, min_partition_size)
    return _by_task(records, num_partitions, seed)
