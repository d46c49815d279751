"""Integration: steering hooks on tiny models built from config against manual references,
save/load of steering, composition with IRCAN edits, and a cross-family map."""

import numpy as np
import pytest
import torch

from fedprivacy import concepts, sites
from fedprivacy.alignment.stage import save_aligned
from fedprivacy.config import ModelConfig
from fedprivacy.data.tokenizer import build_tokenizer
from fedprivacy.editing import scale_neurons
from fedprivacy.lm import generate_ids
from fedprivacy.models import build_model

pytestmark = pytest.mark.integration
TEXTS = ["Anna got a puppy. The emotion is", "Ben read the paper.", "Scenario: Leo saw a snake."]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return build_model(ModelConfig(hidden_size=64, num_layers=3), tok, 0).eval()


def _ids(tok, text):
    return torch.tensor([tok(text)["input_ids"]])


def test_steering_the_top_block_equals_adding_by_hand(llama, tok):
    # Prepare: the unsteered top-block output, then norm and head applied by hand
    ids = _ids(tok, TEXTS[0])
    top = sites.num_layers(llama) - 1
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = sites.run_with_cache(llama, [f"resid.{top}"], input_ids=ids)
        manual = llama.lm_head(llama.model.norm(cache[f"resid.{top}"] + 0.7 * v))

        # Execute
        with concepts.steered(llama, {top: v}, alpha=0.7):
            hooked = llama(input_ids=ids).logits
        after = llama(input_ids=ids).logits
        plain = llama(input_ids=ids).logits

    # Assert: equal to the manual addition, and the hook is gone afterwards
    assert torch.allclose(hooked, manual, atol=1e-5)
    assert torch.equal(after, plain) and not torch.allclose(hooked, plain)


def test_steering_a_middle_block_equals_a_manual_forward(llama, tok):
    # Prepare: a manual forward through the blocks, adding α·v after block 1 by hand
    ids = _ids(tok, TEXTS[1])
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with concepts.steered(llama, {1: v}, alpha=1.5):
            hooked = llama(input_ids=ids, use_cache=False).logits
        # the blocks' inputs are recorded unsteered; block 2 is then re-run on the sum
        captured = {}
        handle = llama.model.layers[2].register_forward_pre_hook(
            lambda m, args, kwargs: captured.update(kwargs=kwargs), with_kwargs=True)
        _, cache = sites.run_with_cache(llama, ["resid.1"], input_ids=ids, use_cache=False)
        handle.remove()
        kwargs = {k: val for k, val in captured["kwargs"].items() if k != "hidden_states"}
        out = llama.model.layers[2](cache["resid.1"] + 1.5 * v, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        manual = llama.lm_head(llama.model.norm(out))
    assert torch.allclose(hooked, manual, atol=1e-5)


def test_steered_generation_with_the_kv_cache_equals_full_recompute(llama, tok):
    prompt = tok(TEXTS[2])["input_ids"]
    v = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 3
    with concepts.steered(llama, {0: v, 2: v}, alpha=1.0):
        cached = generate_ids(llama, [prompt], 6)[0].tolist()
        hf = llama.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                            pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(llama(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert cached == seq[len(prompt):] == hf


def test_saved_steering_is_reattached_by_one_load_call(llama, tok, tmp_path):
    # Prepare: two persistent additions (as ConTrans then steering would leave them)
    ids = _ids(tok, TEXTS[0])
    v1, v2 = torch.randn(64), torch.randn(64)
    with torch.no_grad():
        plain = llama(input_ids=ids).logits
    concepts.add_steering(llama, concepts.Addition(1, v1, 0.5, "contrans:joy"))
    concepts.add_steering(llama, concepts.Addition(1, v2, 0.25, "steering:joy:l0"))
    try:
        with torch.no_grad():
            steered = llama(input_ids=ids).logits
        save_aligned(llama, tok, tmp_path / "aligned")
    finally:
        concepts.clear_steering(llama)

    # Execute
    loaded = concepts.from_pretrained(tmp_path / "aligned").eval()
    with torch.no_grad():
        again = loaded(input_ids=ids).logits
        cleared = llama(input_ids=ids).logits

    # Assert
    assert [(a.layer, a.alpha, a.name) for a in concepts.steering_of(loaded)] == \
        [(1, 0.5, "contrans:joy"), (1, 0.25, "steering:joy:l0")]
    assert torch.allclose(again, steered, atol=1e-5) and not torch.allclose(again, plain)
    assert torch.equal(cleared, plain)


def test_steering_composes_with_neuron_edits(llama, tok):
    ids = _ids(tok, TEXTS[0])
    v = torch.randn(64)
    with torch.no_grad():
        with concepts.steered(llama, {1: v}):
            steered_only = llama(input_ids=ids).logits
        handle = scale_neurons(llama, {0: [1, 2, 3]}, 4.0)
        edited_only = llama(input_ids=ids).logits
        with concepts.steered(llama, {1: v}):
            both = llama(input_ids=ids).logits
        handle.undo()
        with concepts.steered(llama, {1: v}):
            undone = llama(input_ids=ids).logits
    assert not torch.allclose(both, steered_only) and not torch.allclose(both, edited_only)
    assert torch.allclose(undone, steered_only, atol=1e-6)


def test_cross_family_map_between_models_of_different_widths(llama, tok):
    # Prepare: a GPT-2-style model of width 96 and the LLaMA-style one of width 64
    gpt2 = build_model(ModelConfig(preset="tiny-gpt2", hidden_size=96, num_layers=2), tok, 1)
    texts = [f"{name} {verb} the {thing}." for name in ("Anna", "Ben", "Clara", "David")
             for verb in ("read", "took", "saw", "made", "fixed") for thing in
             ("paper", "bus", "tea", "desk", "shelf", "window", "mail")]
    x = concepts.last_token_states(llama, tok, texts, [1])[0]
    y = concepts.last_token_states(gpt2, tok, texts, [1])[0]

    # Execute
    fmap = concepts.fit_linear_map(x[:100], y[:100])
    v = concepts.concept_vectors(x[None, :10], x[None, 10:20])[0]

    # Assert: the fit is least squares, the mapped vector lives in the target width
    ref, *_ = np.linalg.lstsq(x[:100].double().numpy(), y[:100].double().numpy(), rcond=None)
    assert np.allclose(fmap.weight.numpy(), ref, atol=1e-6)
    assert fmap(v[None]).shape == (1, 96)
    assert fmap.error(x[:100], y[:100]) < min(1.0, fmap.error(x[100:], y[100:]))


def test_last_token_states_ignore_padding(llama, tok):
    together = concepts.last_token_states(llama, tok, TEXTS, [0, 2])
    alone = torch.stack([concepts.last_token_states(llama, tok, [t], [0, 2])[:, 0]
                         for t in TEXTS], 1)
    assert together.shape == (2, 3, 64) and torch.allclose(together, alone, atol=1e-5)
