"""Unit: concept vectors, signs, recognition, the least-squares map, the α rule and the data."""

import numpy as np
import pytest
import torch

from fedprivacy import concepts
from fedprivacy.alignment.concept_sets import REAL_SETS, real_set
from fedprivacy.alignment.steer_eval import (
    choose_alpha,
    mean_rows,
    random_directions,
    word_prefixes,
)
from fedprivacy.data.concept_world import EVENTS, ConceptWorld, ConceptWorldConfig

pytestmark = pytest.mark.unit


def _pairs(n=40, d=8, layers=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    direction = torch.zeros(d)
    direction[0] = 1.0
    neg = torch.randn(layers, n, d, generator=gen)
    pos = neg + 2.0 * direction + 0.1 * torch.randn(layers, n, d, generator=gen)
    return pos, neg, direction


def test_mean_difference_is_the_mean_of_pair_differences():
    pos, neg, _ = _pairs()
    v = concepts.concept_vectors(pos, neg, "mean")
    slow = torch.stack([sum(pos[layer, i] - neg[layer, i] for i in range(pos.shape[1]))
                        / pos.shape[1] for layer in range(pos.shape[0])])
    assert torch.allclose(v, slow, atol=1e-5)


def test_sign_is_fixed_so_positives_project_higher():
    pos, neg, direction = _pairs()
    # Execute: a vector pointing the wrong way, and PCA (whose SVD sign is arbitrary)
    flipped = concepts.fix_signs(torch.stack([-direction, -direction]).double(), pos.double(),
                                 neg.double())
    pca = concepts.concept_vectors(pos, neg, "pca")
    assert torch.all(flipped[:, 0] > 0)
    assert torch.all(pca[:, 0] > 0)  # the SVD's arbitrary sign is corrected
    assert torch.allclose(pca.norm(dim=-1), concepts.concept_vectors(pos, neg).norm(dim=-1),
                          atol=1e-4)


def test_recognition_accuracy_on_hand_made_vectors():
    # Prepare: 4 pairs in 2-D; the vector (1, 0) gets 3 right, (0, 1) gets 1 right
    pos = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    neg = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 2.0], [1.0, 0.0]]])
    good = concepts.recognition_accuracy(torch.tensor([[1.0, 0.0]]), pos, neg)
    bad = concepts.recognition_accuracy(torch.tensor([[0.0, 1.0]]), pos, neg)
    assert float(good) == 0.75 and float(bad) == 0.25
    assert concepts.best_layer(torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
                               pos.expand(2, -1, -1), neg.expand(2, -1, -1)) == 1


def test_linear_map_matches_numpy_lstsq():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(12, 7, generator=gen, dtype=torch.float64) \
        + 0.01 * torch.randn(300, 7, generator=gen, dtype=torch.float64)
    fmap = concepts.fit_linear_map(x, y)
    ref, *_ = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)
    assert np.allclose(fmap.weight.numpy(), ref, atol=1e-10)
    assert fmap.error(x, y) < 0.05


def test_linear_map_rank_deficient_equals_lstsq_minimum_norm():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    x = torch.cat([base, base[:, :1] * 2.0], 1)  # column 3 = 2 × column 0
    y = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    ref, *_ = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)
    assert np.allclose(concepts.fit_linear_map(x, y).weight.numpy(), ref, atol=1e-8)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="X \\[n, d1\\] and Y"):
        concepts.fit_linear_map(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="layers, pairs, d"):
        concepts.concept_vectors(torch.zeros(1, 3, 2), torch.zeros(1, 2, 2))


def test_alpha_rule_respects_the_perplexity_limit():
    base = {"rate": 0.1, "perplexity": 10.0}
    rows = {0.5: {"rate": 0.3, "perplexity": 10.5}, 1.0: {"rate": 0.6, "perplexity": 12.0},
            2.0: {"rate": 0.05, "perplexity": 10.0}}
    assert choose_alpha(rows, "rate", base, 0.10) == (0.5, pytest.approx(0.2))
    assert choose_alpha(rows, "rate", base, 0.25)[0] == 1.0
    assert choose_alpha({2.0: rows[2.0]}, "rate", base, 0.1) == (0.0, 0.0)


def test_random_directions_keep_the_norm_and_the_seed():
    like = torch.arange(6.0)
    a, b = random_directions(like, 2, 7), random_directions(like, 2, 7)
    assert all(torch.allclose(r.norm(), like.norm()) for r in a)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])


def test_mean_rows_keeps_only_the_measures_every_language_has():
    rows = [{"margin": 1.0, "vader": 0.5, "perplexity": 10.0}, {"margin": 3.0, "perplexity": 20.0}]
    assert mean_rows(rows) == {"margin": 2.0, "perplexity": 15.0}


def test_word_prefixes():
    assert word_prefixes(["a b c d", "a b c"]) == ["a b c", "a b c d"]


def test_world_languages_share_structure_not_words():
    world = ConceptWorld(ConceptWorldConfig())
    base = world.scenario("joy", "Anna", "got a puppy", 0).prompt
    words = [set(world.translate(base, k).split()) for k in range(4)]
    assert world.translate(base, 0) == base
    assert all(len(words[i] & words[j]) <= 1 for i in range(4) for j in range(i + 1, 4))
    assert len(set(world.labels(2))) == 4
    records = world.corpus(2000, 0)
    tagged = sum(r["completion"].strip() in world.labels(3) for r in records)
    assert 0 < tagged < 0.03 * len(records)  # the rarest language: ~1 % of the corpus


def test_world_label_noise_gives_that_share_another_emotions_label():
    # Prepare: the event names its emotion; language 0 only, so the text is readable
    emotion_of = {event: e for e, events in EVENTS.items() for event in events}

    def disagreeing(label_noise: float, n: int) -> list[bool]:
        world = ConceptWorld(ConceptWorldConfig(shares=[1.0], label_noise=label_noise))
        return [emotion_of[r["prompt"].split(" ", 2)[2].split(".")[0]] != r["completion"].strip()
                for r in world.corpus(n, 0) if r["prompt"].startswith("Scenario:")]

    # Execute
    wrong = disagreeing(0.25, 4000)

    # Assert: about a quarter disagree, and without noise none does
    assert abs(sum(wrong) / len(wrong) - 0.25) < 0.03
    assert not any(disagreeing(0.0, 500))


def test_world_shared_labels_are_language_zeros_in_every_language():
    shared = ConceptWorld(ConceptWorldConfig(shared_labels=True))
    assert all(shared.labels(k) == list(EVENTS) for k in range(4))
    scenario = shared.scenario("joy", "Anna", "got a puppy", 2)
    assert scenario.label == "joy" and "puppy" not in scenario.prompt  # the text stays translated
    assert ConceptWorld(ConceptWorldConfig()).labels(2) != list(EVENTS)


def test_world_rejects_unknown_emotions():
    with pytest.raises(ValueError, match="data.concepts.emotions"):
        ConceptWorld(ConceptWorldConfig(emotions=["joy", "boredom"]))


@pytest.mark.parametrize("name", REAL_SETS)
def test_real_sets_are_parallel_and_split_by_id(name):
    cs = real_set(name, seed=0)
    assert cs.languages == ["en", "fr", "de", "es"]
    sizes = {lang: {s: len(cs.pairs(lang, s)) for s in ("train", "dev", "test")}
             for lang in cs.languages}
    assert all(v == sizes["en"] for v in sizes.values())
    assert sum(sizes["en"].values()) >= 100
    assert len(cs.data["fr"].neutral) >= 200 and len(cs.data["de"].eval["prompts"]) == 40
    with pytest.raises(ValueError, match="no language"):
        real_set(name, 0, ["xx"])
