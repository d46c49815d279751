"""Unit tests of the partition schemes (flwr-datasets partitioners underneath)."""

from collections import Counter

import pytest

from fedprivacy.data.partition import partition_records
from fedprivacy.data.records import make_record

pytestmark = pytest.mark.unit


def _records(tasks: int = 3, per_task: int = 40) -> list:
    """Records of `tasks` tasks with unique completions."""
    return [make_record("", f"t{t}-{i}", f"task{t}") for t in range(tasks) for i in range(per_task)]


def _ids(parts: list) -> list:
    return [r["completion"] for part in parts for r in part]


def test_iid_is_a_seeded_near_equal_partition():
    # Prepare
    records = _records()

    # Execute
    parts = partition_records(records, 7, "iid", seed=0)

    # Assert
    assert sorted(_ids(parts)) == sorted(r["completion"] for r in records)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == partition_records(records, 7, "iid", seed=0)
    assert parts != partition_records(records, 7, "iid", seed=1)
    assert _ids(parts)[:40] != [r["completion"] for r in records[:40]]


def test_dirichlet_skews_tasks_and_keeps_every_record():
    # Prepare
    records = _records(tasks=4, per_task=100)

    # Execute
    parts = partition_records(records, 5, "dirichlet", seed=3, alpha=0.1, min_partition_size=1)

    # Assert
    assert sorted(_ids(parts)) == sorted(r["completion"] for r in records)
    assert all(len(p) >= 1 for p in parts)
    dominant_shares = [Counter(r["task"] for r in p).most_common(1)[0][1] / len(p) for p in parts]
    assert sum(dominant_shares) / len(parts) > 0.5
    assert parts == partition_records(records, 5, "dirichlet", seed=3, alpha=0.1)


def test_by_task_gives_client_i_task_i_mod_t():
    # Prepare
    records = _records(tasks=3, per_task=30)

    # Execute
    parts = partition_records(records, 6, "by_task", seed=0)

    # Assert
    assert [{r["task"] for r in p} for p in parts] == [{f"task{i % 3}"} for i in range(6)]
    assert all(len(p) == 15 for p in parts)
    assert sorted(_ids(parts)) == sorted(r["completion"] for r in records)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_partitions": 2, "scheme": "random"}, "scheme"),
        ({"num_partitions": 0, "scheme": "iid"}, "num_partitions"),
        ({"num_partitions": 500, "scheme": "iid"}, "num_partitions"),
        ({"num_partitions": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"num_partitions": 2, "scheme": "by_task"}, "num_partitions"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    # Prepare
    records = _records(tasks=3, per_task=10)

    # Execute
    with pytest.raises(ValueError) as error:
        partition_records(records, seed=0, **kwargs)

    # Assert
    assert name in str(error.value)
