"""IRCAN's selection and metrics on hand-made scores and predictions (no model)."""

import pytest
import torch

from fedprivacy.alignment import ircan
from fedprivacy.alignment.conflict_eval import conflict_metrics, first_word
from fedprivacy.data.conflicts import ConflictItem

pytestmark = pytest.mark.unit


def test_candidates_keep_the_top_above_the_relative_threshold():
    # Prepare: layer 0 holds the maximum 1.0; 0.09 is under 0.1 x max; negatives never count
    scores = torch.tensor([[1.0, 0.09, -5.0, 0.5], [0.1, 0.3, 0.0, 0.2]])

    # Execute
    found = ircan.candidates(scores, threshold_ratio=0.1, top=20)
    top2 = ircan.candidates(scores, threshold_ratio=0.1, top=2)

    # Assert: best first, as (layer, index)
    assert found == [(0, 0), (0, 3), (1, 1), (1, 3), (1, 0)]
    assert top2 == [(0, 0), (0, 3)]


def test_candidates_of_an_item_without_positive_score_are_empty():
    assert ircan.candidates(torch.tensor([[-1.0, 0.0], [-0.5, -2.0]])) == []


def test_most_frequent_counts_lists_and_breaks_ties_by_first_seen():
    # Prepare
    lists = [[(0, 1), (1, 2)], [(1, 2), (0, 5)], [(1, 2), (0, 1)], [(0, 5), (0, 7)]]

    # Execute
    chosen = ircan.most_frequent(lists, 3)

    # Assert: (1,2) in 3 lists; (0,1) and (0,5) in 2 each, (0,1) seen first
    assert chosen == [(1, 2), (0, 1), (0, 5)]
    assert ircan.neuron_counts(lists)[(0, 7)] == 1


def test_jaccard():
    assert ircan.jaccard([(0, 1), (0, 2)], [(0, 2), (1, 3)]) == pytest.approx(1 / 3)
    assert ircan.jaccard([], []) == 1.0
    assert ircan.by_layer([(1, 4), (0, 2), (1, 1)]) == {1: [4, 1], 0: [2]}


def _item(form, context, memory):
    return ConflictItem("x", form, "p", "q", context, memory, ("A", "B") if form == "mcq" else ())


def test_conflict_metrics_on_hand_made_predictions():
    # Prepare: completion predictions are first words; mcq predictions letters
    items = [_item("completion", "early", "never"), _item("completion", "Paris", "Rome"),
             _item("completion", "cat", "dog"), _item("mcq", "A", "B"), _item("mcq", "B", "A")]
    predicted = ["early", "rome", "bird", "A", "A"]

    # Execute
    metrics = conflict_metrics(items, predicted)

    # Assert: accuracy 2/5 (early, A); stubbornness 2/5 (rome, the second A)
    assert metrics == {"accuracy": pytest.approx(0.4), "stubbornness": pytest.approx(0.4)}


def test_first_word_ignores_case_and_punctuation():
    assert first_word(' Early. And then') == "early"
    assert first_word('"never," he said') == "never"
    assert first_word("   ") == ""


def test_conflict_metrics_need_one_prediction_per_item():
    with pytest.raises(ValueError, match="one prediction per item"):
        conflict_metrics([_item("mcq", "A", "B")], [])
