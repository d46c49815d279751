"""IRCAN on tiny models: the context-baseline attribution against a slow reference (both
variants), completeness, the edit and its undo, CAD, and the stage on a plain model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedprivacy import attribution, sites
from fedprivacy.alignment import ircan
from fedprivacy.alignment.conflict_eval import answer_token, evaluate_conflicts, predictions
from fedprivacy.data.conflicts import ConflictItem
from fedprivacy.data.encoding import prompt_ids
from tests.tiny import tiny_llama, word_tokenizer

pytestmark = pytest.mark.integration

WORDS = ["[PAD]", "[UNK]", "[EOS]", "Note:", "Mark", "moved", "to", "Spain.", "Q:", "lives",
         "in", "Madrid", "Paris", "A.", "B.", "Answer:", "A", "B"]
ITEM = ConflictItem("c0", "completion", "Note: Mark moved to Spain. Q: Mark lives in",
                    "Q: Mark lives in", "Madrid", "Paris")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


@pytest.fixture
def model():
    return tiny_llama(len(WORDS), initializer_range=0.3).double().eval()


def reference(model, tok, item, steps, variant):
    """Slow eq. 1: per layer and step, one forward of the with-context prompt with the last
    position patched, and one gradient; the endpoint variant differentiates w.r.t. a_w."""
    w = torch.tensor(prompt_ids(tok, item.prompt))
    wo = torch.tensor(prompt_ids(tok, item.query))
    token = answer_token(tok, item.context_answer)
    rows = []
    for layer in range(sites.num_layers(model)):
        end = attribution.ffn_activations(model, w, layer, -1)
        base = attribution.ffn_activations(model, wo, layer, -1)
        total = torch.zeros_like(end)
        for alpha in attribution.step_alphas(steps).tolist():
            leaf = (end if variant == "endpoint" else base + alpha * (end - base)).clone()
            leaf.requires_grad_(True)
            point = base + alpha * (leaf - base) if variant == "endpoint" else leaf
            with torch.enable_grad(), attribution.patch_ffn(model, layer, len(w) - 1, point):
                prob = torch.softmax(model(input_ids=w[None]).logits[0, -1], -1)[token]
                (grad,) = torch.autograd.grad(prob, leaf)
            total += (end - base) / steps * grad
        rows.append(total)
    return torch.stack(rows)


@pytest.mark.parametrize("variant", ["standard", "endpoint"])
def test_context_attribution_equals_the_slow_reference(model, tok, variant):
    # Execute
    ours = ircan.context_attribution(model, tok, ITEM, steps=5, variant=variant)
    expected = reference(model, tok, ITEM, 5, variant)

    # Assert
    assert expected.abs().max() > 1e-5
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_completeness_with_the_context_free_baseline(model, tok):
    # Prepare: f(v) = P(Madrid | prompt, a^l_last := v)
    w = torch.tensor(prompt_ids(tok, ITEM.prompt))
    base = attribution.ffn_activations(model, torch.tensor(prompt_ids(tok, ITEM.query)), None, -1)
    token = answer_token(tok, ITEM.context_answer)

    def f(layer, value):
        with torch.no_grad(), attribution.patch_ffn(model, layer, len(w) - 1, value):
            return torch.softmax(model(input_ids=w[None]).logits[0, -1], -1)[token]

    # Execute
    scores = ircan.context_attribution(model, tok, ITEM, steps=400)

    # Assert: Σ_i Att_i = f(a_w) − f(a_wo) per layer, up to the Riemann error
    for layer in range(sites.num_layers(model)):
        end = attribution.ffn_activations(model, w, layer, -1)
        gap = f(layer, end) - f(layer, base[layer])
        assert abs(gap) > 1e-4
        assert scores[layer].sum().item() == pytest.approx(gap.item(), rel=0.02, abs=1e-6)


def test_reweight_scales_the_columns_and_undo_restores_them(model):
    # Prepare
    before = {n: p.clone() for n, p in model.named_parameters()}
    neurons = [(1, 3), (0, 5), (1, 7)]

    # Execute
    handle = ircan.reweight(model, neurons, 4.0)
    down = sites.ffn(model, 1).weight

    # Assert
    torch.testing.assert_close(down[:, 3], 4.0 * before["model.layers.1.mlp.down_proj.weight"][:, 3])
    assert model.config.fedprivacy_edits[0]["factor"] == 4.0
    handle.undo()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_random_neurons_are_distinct_and_seeded(model):
    a, b = ircan.random_neurons(model, 20, 1), ircan.random_neurons(model, 20, 1)
    assert a == b and len(set(a)) == 20
    assert all(0 <= layer < 2 and 0 <= i < 64 for layer, i in a)


def test_cad_with_alpha_zero_is_greedy_decoding_and_mcq_scores_letters(model, tok):
    # Prepare
    mcq = ConflictItem("m0", "mcq", "Note: Mark moved to Spain. Q: A. Madrid B. Paris Answer:",
                       "Q: A. Madrid B. Paris Answer:", "A", "B", ("A", "B"))

    # Execute
    plain = predictions(model, tok, [ITEM, mcq], max_new_tokens=3)
    cad0 = predictions(model, tok, [ITEM, mcq], max_new_tokens=3, cad_alpha=0.0)
    ids = torch.tensor([prompt_ids(tok, mcq.prompt)])
    letters = [answer_token(tok, x) for x in "AB"]
    with torch.no_grad():
        best = "AB"[int(model(input_ids=ids).logits[0, -1, letters].argmax())]

    # Assert
    assert plain == cad0
    assert plain[1] == best
    metrics = evaluate_conflicts(model, tok, [ITEM, mcq], max_new_tokens=3)
    assert set(metrics) == {"accuracy", "stubbornness"}


def _stage_run(tmp_path, extra):
    """The stage on the project's tiny preset, untrained, on the fact world."""
    from fedprivacy.alignment.stage import run_stages, save_aligned
    from fedprivacy.config import load_config
    from fedprivacy.models import build_model, load_tokenizer

    cfg = load_config(None, ["data.source=facts", "data.partition=iid", "alignment=[ircan]",
                             "model.hidden_size=32", "model.num_layers=2",
                             "alignment.ircan.items=8", "alignment.ircan.steps=2",
                             "alignment.ircan.h_grid=[1,2]", "alignment.ircan.beta_grid=[3]",
                             "alignment.ircan.random_draws=2",
                             "alignment.ircan.max_new_tokens=2", *extra])
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, 0).eval()
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = run_stages(model, tok, cfg, tmp_path / "alignment")
    save_aligned(model, tok, tmp_path / "aligned")
    return report["ircan"], before, model


def test_stage_writes_reports_and_an_aligned_model_that_records_the_edit(tmp_path):
    # Execute: apply_if_worse, so the untrained model is edited whatever dev says
    result, _, model = _stage_run(tmp_path, ["alignment.ircan.apply_if_worse=true"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "aligned")

    # Assert
    assert set(result["table"]) == {"original", "ircan", "ercan", "ern", "errn"}
    assert len(result["grid"]) == 2 and result["chosen"]["h"] in (1, 2)
    assert result["items"] == {"dev": 4, "test": 4}
    for name in ("data.jsonl", "beta_curve.png", "table.md", "report.json"):
        assert (tmp_path / "alignment" / "ircan" / name).is_file(), name
    applied = loaded.config.fedprivacy_alignment
    assert applied[0]["stage"] == "ircan" and applied[0]["beta"] == 3.0 and applied[0]["edited"]
    assert sum(len(e["indices"]) for e in loaded.config.fedprivacy_edits) == \
        len(applied[0]["neurons"]) > 0
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name])
    rows = [json.loads(line) for line in (tmp_path / "alignment/ircan/data.jsonl").open()]
    assert {r["split"] for r in rows} == {"dev", "test"}


def test_stage_leaves_the_model_alone_when_nothing_beats_it_on_dev(tmp_path):
    # Execute: an untrained model answers no conflict, so no grid point gains on dev
    result, before, model = _stage_run(tmp_path, [])

    # Assert
    assert result["dev_gain"] <= 0 and not result["applied"]["edited"]
    assert result["after"] == result["before"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_both_variants_from_one_pass_equal_separate_passes(model, tok):
    # Execute
    both = ircan.context_attribution(model, tok, ITEM, steps=5,
                                     variant=("standard", "endpoint"))

    # Assert
    for variant in ("standard", "endpoint"):
        torch.testing.assert_close(
            both[variant], ircan.context_attribution(model, tok, ITEM, steps=5, variant=variant),
            rtol=0, atol=0)
