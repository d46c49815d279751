"""DEPN's server side without a model: the ranked union of the clients' neurons, and the server's
dev text that its union guard tunes on, apart from the eval text it reports."""

import pytest

from fedprivacy.config import load_config
from fedprivacy.evaluation import server_records
from fedprivacy.privacy.depn import neuron_ids, neuron_pairs, round_robin_union

pytestmark = pytest.mark.unit


def test_round_robin_union_takes_each_rank_in_turn_and_keeps_first_appearances():
    # Execute
    union = round_robin_union([[5, 1, 9], [1, 7], [], [3, 5, 8, 2]])
    # Assert: rank 1 of each client, then rank 2, ...; an id already taken is skipped
    assert union == [5, 1, 3, 7, 9, 8, 2]
    assert round_robin_union([]) == []


def test_neuron_ids_and_pairs_keep_the_ranking():
    # Execute
    ids = neuron_ids([(1, 3), (0, 7)], d_ff=10)
    # Assert
    assert ids == [13, 7]
    assert neuron_pairs(ids, 10) == [(1, 3), (0, 7)]


@pytest.mark.parametrize("source", ["pii", "tasks"])
def test_server_dev_records_are_drawn_apart_from_its_eval_records(source):
    # Prepare
    cfg = load_config(None, [f"data.source={source}", "data.tasks=[parity,larger]",
                             "server.eval_records=64"])
    # Execute
    eval_set, dev = server_records(cfg), server_records(cfg, "server-dev")
    # Assert: another draw of the same kind (the same tasks), not the eval set again
    assert len(dev) == len(eval_set) == 64
    assert dev != eval_set
    assert {r["task"] for r in dev} == {r["task"] for r in eval_set}
