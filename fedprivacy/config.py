"""Typed experiment configuration: schema, load/merge/validate, flatten for Flower.

One schema (`ExperimentConfig`) describes a run. YAML files and ``key=value`` dotlist
overrides are merged onto it with OmegaConf, so an unknown key or a value of the wrong type
fails before anything starts, with the key's path in the message. Flower's ``run_config`` is
flat (bool/int/float/str only): `flatten` turns the resolved config into that form and
`unflatten` rebuilds the typed config on the ServerApp and ClientApp side.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedprivacy.data.federated import DataConfig

FlatConfig = dict[str, bool | int | float | str]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key path or file."""


@dataclass
class ModelConfig:
    preset: str = "tiny-llama"  # a name in fedprivacy.models.PRESETS, or "" to load name_or_path
    name_or_path: str = ""  # HF name or local folder, used when preset == ""
    gguf_file: str = ""  # a GGUF file inside name_or_path (converted once, then cached)
    hidden_size: int = 0  # 0 = the preset's value
    num_layers: int = 0
    intermediate_size: int = 0
    max_length: int = 256  # position embeddings of presets


@dataclass
class TrainConfig:
    steps: int = 40  # optimizer steps per client per round
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping of plain SFT (0 = off)
    eval_batch_size: int = 64
    device: str = "auto"  # auto (CUDA when visible, else CPU) | cpu | cuda | cuda:<i>


@dataclass
class DPConfig:
    """DP-SGD settings (``client.dp``).

    target_epsilon = 0 trains with ``noise_multiplier``; a positive target replaces it with the
    smallest noise that keeps epsilon <= target after the planned total steps of the run.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    poisson_sampling: bool = False


@dataclass
class SwingConfig:
    """Swing distillation settings (``client.swing``); every default is this project's choice.

    detector: name in ``detectors.DETECTORS``; temperature_map: ``linear`` | ``exponential``;
    noise: ``gaussian`` | ``laplace`` | ``none``; alpha: weight of the distillation term;
    teacher_steps / student_steps: training steps of the teacher on the private data and of the
    student's distillation.
    """

    detector: str = "span"
    temperature_map: str = "linear"
    t0: float = 1.0
    t_max: float = 20.0
    noise: str = "gaussian"
    epsilon: float = 8.0
    delta: float = 1e-5
    alpha: float = 0.5
    teacher_steps: int = 100
    student_steps: int = 100


@dataclass
class DEPNConfig:
    top_z: int = 20  # neurons zeroed (METHODS.md §4: the most voted z)
    steps: int = 20  # integrated-gradients steps m
    threshold_ratio: float = 0.1  # per-record candidates: score >= ratio x max
    max_records: int = 16  # private records used for detection per round


@dataclass
class ClientConfig:
    # Local pipeline: one training step (sft | dp_sgd | swing | kd), then post-training
    # steps (depn). kd = plain distillation from a local teacher, swing's baseline.
    steps: list[str] = field(default_factory=lambda: ["sft"])
    dp: DPConfig = field(default_factory=DPConfig)
    swing: SwingConfig = field(default_factory=SwingConfig)
    depn: DEPNConfig = field(default_factory=DEPNConfig)
    fail_partitions: list[int] = field(default_factory=list)  # fault injection for tests


@dataclass
class FewFedWeightConfig:
    pseudo_count: int = 32  # pseudo samples generated per client task per round
    pseudo_start_round: int = 2  # round 1's global model is the random init: nothing to share
    pseudo_max_new_tokens: int = 12
    pseudo_temperature: float = 1.0
    pseudo_top_p: float = 0.95
    energy_temperature: float = 1.0  # T in E(x) = -T logsumexp(f(x)/T)
    sample_weighting: str = "softmax"  # softmax | uniform (fedprivacy.pseudo.SAMPLE_WEIGHTINGS)
    sample_weight_temperature: float = 1.0
    sample_weight_floor: float = 0.0
    sample_top_k: int = 0  # 0 = keep all
    client_weighting: str = "softmax"  # softmax | proportional | uniform | num_examples
    client_weight_temperature: float = 0.5
    pseudo_loss_weight: float = 0.5  # λ: step loss = L(local batch) + λ L_w(pseudo batch)


@dataclass
class StrategyConfig:
    # fedavg | fewfedweight | local (baseline: each client keeps training its own model)
    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_clients: int = 2  # nodes that must be connected before a round starts
    round_timeout: float = 600.0  # seconds; stragglers past it are dropped
    fewfedweight: FewFedWeightConfig = field(default_factory=FewFedWeightConfig)


@dataclass
class SimulationConfig:
    num_clients: int = 4
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0
    ray_cpus: int = 0  # CPUs Ray may use (0 = all)


@dataclass
class EvaluationConfig:
    privacy: bool = False  # clients report canary exposure / extraction of the global model
    exposure: str = "digitwise"  # exact | extrapolated | digitwise
    exposure_samples: int = 2000  # candidates sampled by the extrapolated estimator
    # clients also score their own model after local training (validation and test split);
    # FewFedWeight always gets the validation score it weighs clients by
    client_model_scores: bool = False


@dataclass
class ExperimentConfig:
    name: str = "quickstart"
    seed: int = 0
    rounds: int = 3
    out_dir: str = ""  # run folder; "" = runs/<name>-<time>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("tasks", "pii", "files"),
    "data.partition": ("by_task", "iid", "dirichlet"),
    "strategy.name": ("fedavg", "fewfedweight", "local"),
    "strategy.fewfedweight.sample_weighting": ("softmax", "uniform"),
    "strategy.fewfedweight.client_weighting": ("softmax", "proportional", "uniform", "num_examples"),
    "client.swing.noise": ("gaussian", "laplace"),
    "evaluation.exposure": ("exact", "extrapolated", "digitwise"),
}
TRAIN_STEPS = ("sft", "dp_sgd", "swing", "kd")
POST_STEPS = ("depn",)


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message} (got {value!r})")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check values that the type system cannot; raise `ConfigError` naming the key path."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        _require(value in allowed, key, f"must be one of {list(allowed)}", value)
    positive = ["rounds", "train.steps", "train.batch_size", "train.eval_batch_size",
                "simulation.num_clients", "simulation.cpus_per_client", "data.train_per_client",
                "data.val_per_client", "data.max_length", "model.max_length",
                "strategy.min_clients", "client.depn.steps", "client.depn.top_z"]
    for key in positive:
        value = _get(cfg, key)
        _require(value >= 1, key, "must be >= 1", value)
    fraction = cfg.strategy.fraction_train
    _require(0.0 < fraction <= 1.0, "strategy.fraction_train", "must be in (0, 1]", fraction)
    fraction = cfg.strategy.fraction_evaluate
    _require(0.0 <= fraction <= 1.0, "strategy.fraction_evaluate", "must be in [0, 1]", fraction)
    _require(cfg.train.lr > 0, "train.lr", "must be > 0", cfg.train.lr)
    _require(cfg.strategy.round_timeout > 0, "strategy.round_timeout", "must be > 0",
             cfg.strategy.round_timeout)
    _require(cfg.strategy.min_clients <= cfg.simulation.num_clients, "strategy.min_clients",
             f"must be <= simulation.num_clients ({cfg.simulation.num_clients})",
             cfg.strategy.min_clients)
    _require(cfg.data.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be > 0",
             cfg.data.dirichlet_alpha)
    _validate_steps(cfg.client.steps)
    if cfg.model.preset == "":
        _require(bool(cfg.model.name_or_path), "model.name_or_path",
                 "must be set when model.preset is empty", cfg.model.name_or_path)
    if cfg.data.source == "files":
        _require(bool(cfg.data.path), "data.path", "must name a file when data.source=files",
                 cfg.data.path)
        _require(Path(cfg.data.path).expanduser().is_file(), "data.path",
                 "file does not exist", cfg.data.path)
    for pid in cfg.client.fail_partitions:
        _require(0 <= pid < cfg.simulation.num_clients, "client.fail_partitions",
                 "partition ids must be in [0, num_clients)", pid)
    return cfg


def _validate_steps(steps: list[str]) -> None:
    key = "client.steps"
    _require(len(steps) >= 1, key, "needs one training step", steps)
    _require(steps[0] in TRAIN_STEPS, key,
             f"must start with one training step of {list(TRAIN_STEPS)}", steps)
    for step in steps[1:]:
        _require(step in POST_STEPS, key,
                 f"after the training step only {list(POST_STEPS)} may follow", steps)
    _require(len(set(steps)) == len(steps), key, "a step appears twice", steps)


def _structured() -> DictConfig:
    base = OmegaConf.structured(ExperimentConfig)
    OmegaConf.set_struct(base, True)
    return base


def _to_dataclass(merged: DictConfig) -> ExperimentConfig:
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, ExperimentConfig)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None
                ) -> ExperimentConfig:
    """Load a YAML file (or the embedded default) and apply ``key=value`` overrides.

    Raises `ConfigError` for a missing file, an unknown key or a wrong type, naming the
    file or key path.
    """
    layers: list[DictConfig] = [_structured()]
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            layers.append(OmegaConf.load(file))
        except Exception as err:  # YAML syntax errors come in several types
            raise ConfigError(f"{file}: cannot parse YAML: {err}") from err
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r}: expected key=value")
        # `key=` (what a shell makes of key='') means the empty string, not null
        layers.append(OmegaConf.from_dotlist([o + "''" if o.endswith("=") else o
                                              for o in overrides]))
    try:
        merged = OmegaConf.merge(*layers)
        cfg = _to_dataclass(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        source = f" in {path}" if path else ""
        raise ConfigError(f"{key}: {err.msg if hasattr(err, 'msg') else err}{source}") from err
    return validate(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run folder's ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --- Flower run_config -------------------------------------------------------------------

def _is_scalar_type(tp: Any) -> bool:
    return tp in (bool, int, float, str)


def flatten(cfg: ExperimentConfig) -> FlatConfig:
    """Flatten to Flower's ``run_config``: dotted keys; lists become JSON strings."""
    out: FlatConfig = {}

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif _is_scalar_type(hints[f.name]):
                out[key] = value
            else:
                out[key] = json.dumps(value)

    walk(cfg, "")
    return out


def unflatten(flat: dict[str, Any]) -> ExperimentConfig:
    """Rebuild the typed config from a flat ``run_config`` (inverse of `flatten`).

    Keys missing from ``flat`` keep their defaults; unknown keys raise `ConfigError`.
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def decode(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for name, value in data.items():
            if name not in fields:
                raise ConfigError(f"{prefix}{name}: unknown key in run_config")
            tp = hints[name]
            if dataclasses.is_dataclass(tp):
                out[name] = decode(tp, value, f"{prefix}{name}.")
            elif _is_scalar_type(tp):
                out[name] = value
            else:
                out[name] = json.loads(value) if isinstance(value, str) else value
        return out

    decoded = decode(ExperimentConfig, nested, "")
    try:
        merged = OmegaConf.merge(_structured(), OmegaConf.create(decoded))
        return validate(_to_dataclass(merged))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '?')}: {err}") from err
