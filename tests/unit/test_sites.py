"""The site table on module skeletons shaped like each family (no model is built)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedprivacy import sites

pytestmark = pytest.mark.unit

D, D_FF, LAYERS = 4, 6, 3

# family -> (model_type, path to the block list in the LM wrapper, in the base model,
#            down projection inside a block, weight shape [neuron axis holds D_FF])
SHAPES = {
    "llama": ("qwen2", "model.layers", "layers", "mlp.down_proj", (D, D_FF)),
    "gpt2": ("gpt2", "transformer.h", "h", "mlp.c_proj", (D_FF, D)),
    "gpt_neox": ("gpt_neox", "gpt_neox.layers", "layers", "mlp.dense_4h_to_h", (D, D_FF)),
    "opt": ("opt", "model.decoder.layers", "decoder.layers", "fc2", (D, D_FF)),
    "bert": ("bert", "bert.encoder.layer", "encoder.layer", "output.dense", (D, D_FF)),
}


class Weighted(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))


def nest(path: str, leaf: nn.Module) -> nn.Module:
    """A module tree in which ``root.get_submodule(path) is leaf``."""
    for name in reversed(path.split(".")):
        parent = nn.Module()
        parent.add_module(name, leaf)
        leaf = parent
    return leaf


def skeleton(family: str, wrapper: bool) -> nn.Module:
    model_type, wrapped, bare, down_proj, shape = SHAPES[family]
    blocks = nn.ModuleList(nest(down_proj, Weighted(shape)) for _ in range(LAYERS))
    model = nest(wrapped if wrapper else bare, blocks)
    model.config = SimpleNamespace(model_type=model_type)
    return model


@pytest.mark.parametrize("wrapper", [True, False], ids=["wrapper", "base"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_table_resolves_every_family(name, wrapper):
    # Prepare
    model = skeleton(name, wrapper)
    _, wrapped, bare, down_proj, shape = SHAPES[name]
    block_list = model.get_submodule(wrapped if wrapper else bare)

    # Execute
    site = sites.ffn(model, 1)
    top = sites.ffn(model, -1)
    stream = sites.resid(model, 2)

    # Assert
    assert sites.family(model).name == name
    assert sites.num_layers(model) == LAYERS
    assert site.module is block_list[1].get_submodule(down_proj)
    assert site.weight.shape == shape and site.weight.shape[site.neuron_axis] == D_FF
    assert site.d_ff == sites.ffn_dim(model) == D_FF
    assert top.layer == 2 and top.module is block_list[2].get_submodule(down_proj)
    assert stream.module is block_list[2] and stream.layer == 2
    assert sites.is_causal(model) == (name != "bert")


def test_gpt2_neurons_are_weight_rows():
    # Prepare / Execute
    site = sites.ffn(skeleton("gpt2", True), 0)

    # Assert: Conv1D stores [d_ff, d], so neuron i is row i
    assert site.neuron_axis == 0


@pytest.mark.parametrize("model_type", ["mixtral", None])
def test_unsupported_architecture_names_class_and_families(model_type):
    # Prepare
    class MixtralForCausalLM(nn.Module):
        pass

    model = MixtralForCausalLM()
    if model_type is not None:
        model.config = SimpleNamespace(model_type=model_type)

    # Execute
    with pytest.raises(sites.UnsupportedArchitectureError) as info:
        sites.ffn(model, 0)

    # Assert
    message = str(info.value)
    assert "MixtralForCausalLM" in message
    for family in ("llama", "gpt2", "gpt_neox", "opt", "bert"):
        assert family in message


def test_known_type_with_unknown_layout_is_reported():
    # Prepare
    model = nn.Module()
    model.config = SimpleNamespace(model_type="llama")

    # Execute / Assert
    with pytest.raises(sites.UnsupportedArchitectureError, match="model.layers"):
        sites.num_layers(model)


def test_layer_out_of_range():
    # Prepare
    model = skeleton("opt", True)

    # Execute / Assert
    with pytest.raises(IndexError, match="3 layers"):
        sites.ffn(model, LAYERS)
    with pytest.raises(IndexError):
        sites.resid(model, -LAYERS - 1)


class Block(nn.Module):
    """A block whose FFN down projection sees [batch·seq, d_ff] (``flat``, like OPT) or
    [batch, seq, d_ff] (like LLaMA)."""

    def __init__(self, flat: bool):
        super().__init__()
        self.flat = flat
        self.down = nn.Linear(D_FF, D)

    def forward(self, hidden_states):
        if not self.flat:
            return self.down(hidden_states)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        return self.down(flat).view(*hidden_states.shape[:-1], D)


@pytest.mark.parametrize("model_type", ["opt", "llama"])
def test_register_hook_sees_batch_seq_d_ff(model_type):
    # Prepare
    _, wrapped, _, down_proj, _ = SHAPES["opt" if model_type == "opt" else "llama"]
    block = Block(flat=model_type == "opt")
    holder = nest(down_proj, block.down)
    for name, child in holder.named_children():
        block.add_module(name, child)
    model = nest(wrapped, nn.ModuleList([block]))
    model.config = SimpleNamespace(model_type=model_type)
    hidden = torch.randn(2, 5, D_FF)
    seen = []

    def zero_position_3(activation):
        seen.append(activation.shape)
        activation = activation.clone()
        activation[:, 3] = 0
        return activation

    # Execute
    handle = sites.ffn(model, 0).register_hook(zero_position_3)
    patched = block(hidden)
    handle.remove()
    plain = block(hidden)

    # Assert
    assert seen == [(2, 5, D_FF)]
    torch.testing.assert_close(patched[:, 3], block.down.bias.expand(2, D))
    torch.testing.assert_close(patched[:, :3], plain[:, :3])
    assert not torch.allclose(plain[:, 3], patched[:, 3])


def test_resid_stream_of_tensor_and_tuple_outputs():
    # Prepare
    hidden, new, extra = torch.ones(1, 2, D), torch.zeros(1, 2, D), object()

    # Execute
    from_tensor = sites.ResidSite.stream(hidden)
    from_tuple = sites.ResidSite.stream((hidden, extra))
    replaced_tuple = sites.ResidSite.replace((hidden, extra), new)
    replaced_tensor = sites.ResidSite.replace(hidden, new)

    # Assert
    assert from_tensor is hidden and from_tuple is hidden
    assert replaced_tuple[0] is new and replaced_tuple[1] is extra
    assert replaced_tensor is new


def hook_counts(model: nn.Module) -> int:
    """Forward and forward-pre hooks registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_hooked_removes_its_hooks_on_exit_and_on_exception(name):
    # Prepare
    model = skeleton(name, True)
    hooks = {"resid.1": lambda h: None, "ffn.0": lambda a: None, "ffn.-1": lambda a: None}

    # Execute
    with sites.hooked(model, hooks) as resolved:
        inside = hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with sites.hooked(model, hooks):
            raise RuntimeError("boom")

    # Assert: OPT's flat FFN also records the block's input shape
    assert inside == (5 if name == "opt" else 3)
    assert hook_counts(model) == 0
    assert resolved.num_layers == LAYERS


def test_bad_site_name_is_rejected_before_any_hook_is_placed():
    # Prepare
    model = skeleton("llama", True)

    # Execute / Assert
    for bad in ("mlp.1", "resid", "resid.x", "ffn.1.2"):
        with pytest.raises(ValueError, match=r"ffn\.<layer>, resid\.<layer>"):
            with sites.hooked(model, {"ffn.0": lambda a: None, bad: lambda a: None}):
                pass
    with pytest.raises(IndexError, match="3 layers"):
        sites.Sites(model).site(f"resid.{LAYERS}")
    assert hook_counts(model) == 0


def test_sites_resolves_the_model_once(monkeypatch):
    # Prepare
    model = skeleton("gpt2", True)
    calls = []
    original = sites.family
    monkeypatch.setattr(sites, "family", lambda m: calls.append(m) or original(m))

    # Execute
    resolved = sites.Sites(model)
    found = [resolved.ffn(layer).module for layer in range(LAYERS)]
    streams = [resolved.site(f"resid.{layer}").module for layer in range(LAYERS)]

    # Assert
    assert len(calls) == 1
    block_list = model.get_submodule("transformer.h")
    assert found == [block.get_submodule("mlp.c_proj") for block in block_list]
    assert streams == list(block_list)
    assert resolved.d_ff == D_FF and resolved.causal


class TupleBlock(nn.Module):
    """A block that returns (hidden, extra), like older HF decoder layers."""

    def forward(self, hidden):
        return hidden * 2, "extra"


@pytest.mark.parametrize("tuple_output", [True, False], ids=["tuple", "tensor"])
def test_resid_hook_sees_and_replaces_the_block_output(tuple_output):
    # Prepare
    block = TupleBlock() if tuple_output else nn.Identity()
    model = nest("model.layers", nn.ModuleList([block]))
    model.config = SimpleNamespace(model_type="llama")
    hidden = torch.ones(2, 3, D)
    seen = []

    # Execute
    with sites.hooked(model, {"resid.0": lambda h: seen.append(h.clone()) or h + 1}):
        patched = block(hidden)
    plain = block(hidden)

    # Assert
    scale = 2 if tuple_output else 1
    assert len(seen) == 1 and torch.equal(seen[0], hidden * scale)
    patched_hidden = patched[0] if tuple_output else patched
    assert torch.equal(patched_hidden, hidden * scale + 1)
    if tuple_output:
        assert patched[1] == "extra"
    assert torch.equal(plain[0] if tuple_output else plain, hidden * scale)
