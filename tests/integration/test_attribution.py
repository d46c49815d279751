"""Integrated gradients over FFN neurons against references: completeness, captum, a slow loop."""

import pytest
import torch
import transformers as tf
from captum.attr import IntegratedGradients

from fedprivacy import attribution, sites
from tests.tiny import tiny_llama as shared_tiny_llama

pytestmark = pytest.mark.integration

VOCAB = 40


def tiny_llama() -> tf.PreTrainedModel:
    return shared_tiny_llama(VOCAB, initializer_range=0.3).double().eval()


def tiny_gpt2() -> tf.PreTrainedModel:
    torch.manual_seed(0)
    config = tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, initializer_range=0.3
    )
    return tf.GPT2LMHeadModel(config).double().eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
OTHER_FAMILIES = {
    "opt": lambda: tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
            num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=32,
        )
    ),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(
        tf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4,
        )
    ),
    "gemma2": lambda: tf.Gemma2ForCausalLM(
        tf.Gemma2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        )
    ),
}
IDS = torch.tensor([3, 17, 5, 29, 11, 8, 23, 2])


def patched_prob(model, layer, position, value, token) -> torch.Tensor:
    """P(token | IDS, a^layer_position := value) by a plain forward pass."""
    with attribution.patch_ffn(model, layer, position, value):
        logits = model(input_ids=IDS[None]).logits[0, position]
    return torch.softmax(logits, -1)[token]


def reference_ig(model, targets, layer, baseline, steps, grid, variant) -> torch.Tensor:
    """Slow IG: one forward/backward per step on the full sequence. The endpoint variant
    differentiates w.r.t. the end point, as the IRCAN code does."""
    total = torch.zeros(sites.ffn(model, layer).d_ff, dtype=torch.float64)
    for position, token in targets.items():
        end = attribution.ffn_activations(model, IDS, layer, position)
        for alpha in attribution.step_alphas(steps, grid).tolist():
            if variant == "endpoint":
                leaf = end.clone().requires_grad_(True)
                point = baseline + alpha * (leaf - baseline)
            else:
                leaf = point = (baseline + alpha * (end - baseline)).requires_grad_(True)
            (grad,) = torch.autograd.grad(patched_prob(model, layer, position, point, token), leaf)
            total += (end - baseline) / steps * grad
    return total


def test_completeness_error_shrinks_with_steps():
    # Prepare
    model = tiny_llama()
    token = int(model(input_ids=IDS[None]).logits[0, -1].argmax())
    end = attribution.ffn_activations(model, IDS, 1, -1)
    zero = torch.zeros_like(end)
    with torch.no_grad():
        gap = patched_prob(model, 1, 7, end, token) - patched_prob(model, 1, 7, zero, token)

    # Execute
    errors = {}
    for steps in (20, 200):
        for grid in ("left", "right"):
            att = attribution.integrated_gradients(
                model, IDS, {-1: token}, 1, steps=steps, grid=grid
            )
            errors[steps, grid] = abs(att.sum().item() - gap.item())

    # Assert: Σ Att ≈ P(end) − P(baseline), with an O(1/m) Riemann error
    assert abs(gap.item()) > 0.1
    for (steps, grid), error in errors.items():
        assert error < abs(gap.item()) / steps, (steps, grid, error)
    for grid in ("left", "right"):
        assert errors[200, grid] < errors[20, grid] / 5


@pytest.mark.parametrize("grid", ["left", "right"])
def test_matches_captum(grid):
    # Prepare: an IRCAN-style baseline (another activation), layer 0, position 5
    model = tiny_llama()
    layer, position, token, steps = 0, 5, 7, 20
    end = attribution.ffn_activations(model, IDS, layer, position)
    baseline = attribution.ffn_activations(model, IDS.flip(0), layer, position)

    def forward(values: torch.Tensor) -> torch.Tensor:
        with attribution.patch_ffn(model, layer, position, values):
            logits = model(input_ids=IDS.expand(len(values), -1)).logits[:, position]
        return torch.softmax(logits, -1)[:, token]

    expected = IntegratedGradients(forward).attribute(
        end[None], baselines=baseline[None], n_steps=steps, method=f"riemann_{grid}"
    )[0]

    # Execute
    ours = attribution.integrated_gradients(
        model, IDS, {position: token}, layer, baseline=baseline, steps=steps, grid=grid
    )

    # Assert: captum builds its α grid with float32 torch.linspace, hence rtol 1e-5 in float64
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["standard", "endpoint"])
def test_fast_path_equals_plain_path(name, variant):
    # Prepare: targets at the last and at an inner position, all layers
    model = MODELS[name]()
    targets = {-1: 4, 3: [9, 12]}

    # Execute
    plain = attribution.integrated_gradients(model, IDS, targets, variant=variant, fast=False)
    fast = attribution.integrated_gradients(model, IDS, targets, variant=variant, fast=True)
    one_layer_per_pass = attribution.integrated_gradients(
        model, IDS, targets, variant=variant, batch_size=1
    )

    # Assert
    assert plain.shape == (2, sites.ffn_dim(model))
    assert plain.abs().max() > 1e-4
    torch.testing.assert_close(fast, plain, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(one_layer_per_pass, plain, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(OTHER_FAMILIES))
def test_fast_path_on_other_families(name):
    # Prepare
    torch.manual_seed(0)
    model = OTHER_FAMILIES[name]().double().eval()
    targets = {-1: 4, 0: 2, 3: 9}

    # Execute
    plain = attribution.integrated_gradients(model, IDS, targets, steps=3, fast=False)
    fast = attribution.integrated_gradients(model, IDS, targets, steps=3, fast=True)

    # Assert: Gemma-2's eager attention takes its softmax in float32, hence the tolerance
    scale = plain.abs().max().item()
    assert scale > 1e-5
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize(
    ("name", "variant", "grid"),
    [
        ("llama", "standard", "left"),
        ("llama", "endpoint", "right"),
        ("gpt2", "standard", "right"),
        ("gpt2", "endpoint", "left"),
    ],
)
def test_batched_equals_reference_loop(name, variant, grid):
    # Prepare
    model = MODELS[name]()
    targets = {7: 4, 2: 13}
    steps = 4
    baseline = torch.linspace(-1, 1, sites.ffn_dim(model), dtype=torch.float64)

    # Execute
    ours = attribution.integrated_gradients(
        model, IDS, targets, [1], baseline=baseline[None], steps=steps, grid=grid, variant=variant
    )[0]
    expected = reference_ig(model, targets, 1, baseline, steps, grid, variant)

    # Assert
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_endpoint_variant_weights_terms_by_alpha():
    # Prepare: on the right grid with m = 1 the only term has α = 1, so the variants agree
    model = tiny_llama()

    # Execute
    standard = attribution.integrated_gradients(model, IDS, {-1: 4}, steps=1, grid="right")
    endpoint = attribution.integrated_gradients(
        model, IDS, {-1: 4}, steps=1, grid="right", variant="endpoint"
    )
    left_endpoint = attribution.integrated_gradients(
        model, IDS, {-1: 4}, steps=1, grid="left", variant="endpoint"
    )

    # Assert: and on the left grid its only term has α = 0
    torch.testing.assert_close(endpoint, standard)
    assert left_endpoint.abs().max() == 0


def test_ffn_activations_match_a_hook_and_handle_padding():
    # Prepare
    model = tiny_gpt2()
    seen = {}
    site = sites.ffn(model, 1)
    handle = site.register_hook(lambda hidden: seen.update(x=hidden.detach()))
    model(input_ids=IDS[None])
    handle.remove()
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), IDS[None]], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)

    # Execute
    single = attribution.ffn_activations(model, IDS, 1, [0, 7])
    stacked = attribution.ffn_activations(model, IDS[None], [0, 1], -1)
    last_padded = attribution.ffn_activations(model, padded, 1, -1, attention_mask=mask)

    # Assert
    torch.testing.assert_close(single, seen["x"][0, [0, 7]])
    assert stacked.shape == (1, 2, site.d_ff)
    torch.testing.assert_close(stacked[0, 1], seen["x"][0, 7])
    assert last_padded.shape == (1, site.d_ff)


def test_masked_lm_uses_the_plain_path():
    # Prepare
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, initializer_range=0.3,
    )
    model = tf.BertForMaskedLM(config).double().eval()

    # Execute
    att = attribution.integrated_gradients(model, IDS, {4: 6}, steps=4)

    # Assert
    assert att.shape == (2, 64) and torch.isfinite(att).all() and att.abs().max() > 0
    with pytest.raises(ValueError, match="causal"):
        attribution.integrated_gradients(model, IDS, {4: 6}, fast=True)
