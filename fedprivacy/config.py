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
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedprivacy.data.federated import DataConfig

FlatConfig = dict[str, bool | int | float | str]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key path or file."""


@dataclass
class ModelConfig:
    preset: str = "tiny-llama"  # a name in fedprivacy.models.PRESETS, or "" to load name_or_path
    # HF name, local folder or packaged model (smollm2, gemma3), used when preset == ""
    name_or_path: str = ""
    gguf_file: str = ""  # a GGUF file inside name_or_path (converted once, then cached)
    hidden_size: int = 0  # 0 = the preset's value
    num_layers: int = 0
    intermediate_size: int = 0
    max_length: int = 256  # position embeddings of presets
    # fedprivacy.adapters: none (full weights on the wire) | lora (HF PEFT: only the adapter
    # trains, crosses the wire and is aggregated; the server saves the merged model)
    adapter: str = "none"  # one of ADAPTERS
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # module names LoRA adapts (LLaMA/Gemma attention projections; GPT-2: [c_attn])
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                             "o_proj"])


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
class ClientConfig:
    """The local pipeline (``client.pipeline``): one training step (a ``train`` method), then
    post-training steps (``post`` methods). Each registered client method adds its own settings
    section here (``client.<section>``; `fedprivacy.methods`)."""

    pipeline: list[str] = field(default_factory=lambda: ["sft"])
    # fault injection for tests: these partitions raise in training / straggle (they sleep
    # slow_step_seconds at every optimizer step, in slow_rounds, or every round when empty)
    fail_partitions: list[int] = field(default_factory=list)
    slow_partitions: list[int] = field(default_factory=list)
    slow_rounds: list[int] = field(default_factory=list)
    slow_step_seconds: float = 0.0


@dataclass
class StrategyConfig:
    """``name``: a registered strategy (fedavg | fewfedweight | local | ...); each registered
    strategy adds its settings section here (``strategy.<section>``)."""

    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # a round waits (up to node_wait) for this many connected nodes, and its aggregate needs
    # this many valid replies (else the global model stays as it was)
    min_clients: int = 2
    round_timeout: float = 600.0  # seconds; stragglers past it are dropped
    # seconds a round stage waits for min_clients connected nodes before it goes on with the
    # nodes it has (a dead SuperNode costs at most this, never forever)
    node_wait: float = 120.0
    # clients evaluate the received global model inside the train message, before training,
    # instead of in a separate evaluate message: one ClientApp start per round instead of two
    # in a deployment; the clients' eval metrics of round r are then of round r-1's model
    evaluate_with_train: bool = False


@dataclass
class ServerConfig:
    """The server's own data for its central evaluation. It never builds or reads client data.

    eval_source: ``auto`` (``tasks`` when ``data.source=tasks``, else ``public``), ``tasks``
    (examples of the configured tasks generated with the server's own seed), ``public``
    (generated PII-free sentences), ``file`` (``eval_path``, a file only the server reads).
    The generated sets hold no PII and no canary; they come from the same public templates
    as the clients' PII-free text, so a sentence can coincide with one by chance.
    """

    eval_source: str = "auto"
    eval_path: str = ""
    eval_records: int = 128  # records of the generated sets (tasks: split over the tasks)


@dataclass
class AlignmentConfig:
    """The server's alignment stage (`fedprivacy.alignment.stage`): registered ``align``
    methods applied in order to the global model after the last round, and, with ``every`` =
    k > 0, also to a copy of the global model after every k-th round (metrics only). Each
    registered stage adds its settings section here (``alignment.<section>``). In YAML,
    ``alignment: [ircan]`` is short for ``alignment: {stages: [ircan]}``."""

    stages: list[str] = field(default_factory=list)
    every: int = 0
    threads: int = 0  # torch threads while the stages run (0: leave torch's setting)


@dataclass
class SimulationConfig:
    num_clients: int = 4
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0
    ray_cpus: int = 0  # CPUs Ray may use (0 = all)
    # "" = a private local Ray per run; "auto" or "HOST:PORT" = attach to that Ray cluster
    ray_address: str = ""


EXPOSURE_ESTIMATORS = ("auto", "exact", "extrapolated", "digitwise")  # fedprivacy.privacy.ledger
SERVER_EVAL_SOURCES = ("auto", "tasks", "public", "file", "facts", "concepts")  # fedprivacy.data.federated
TRACKING_BACKENDS = ("none", "mlflow")  # fedprivacy.tracking
ADAPTERS = ("none", "lora")  # fedprivacy.adapters


@dataclass
class EvaluationConfig:
    privacy: bool = False  # clients report canary exposure / extraction of the global model
    # auto: exact enumeration when the secret space has at most exposure_max_candidates
    # strings, else the skew-normal estimate; or force exact | extrapolated | digitwise (DEPN's
    # digit-wise figure and the membership attack's AUC are reported beside it in any case)
    exposure: str = "auto"  # one of EXPOSURE_ESTIMATORS
    # exact enumeration up to this many candidate secrets; the rule: the largest |A|^n whose
    # worst case (an untrained model, nothing pruned) stays under ~10 s per canary on 2 cores
    exposure_max_candidates: int = 100_000
    exposure_samples: int = 2000  # candidates sampled by the extrapolated estimator
    # clients also score their own model after local training (validation and test split);
    # FewFedWeight always gets the validation score it weighs clients by
    client_model_scores: bool = False


@dataclass
class TrackingConfig:
    """Experiment tracking (`fedprivacy.tracking`): a finished run, and a sweep with its runs
    nested, are logged from their folders to MLflow. ``uri``: "" = a local store in the run's
    (the sweep's) folder, ``mlruns/mlflow.db`` with ``mlruns/artifacts/``; else any MLflow
    tracking URI (``http://host:5000``, ``sqlite:///abs/mlflow.db``, ...). ``experiment``: ""
    = the config's ``name`` (a sweep's: the sweep's ``name``)."""

    backend: str = "none"  # one of TRACKING_BACKENDS; none imports and writes nothing
    uri: str = ""
    experiment: str = ""


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
    server: ServerConfig = field(default_factory=ServerConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Keys renamed since 0.1: an old key is refused with a message naming the new one.
RENAMED = {"client.steps": "client.pipeline", "client.depn.steps": "client.depn.ig_steps"}


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message} (got {value!r})")


def _choice(cfg: Any, key: str, allowed: Any) -> None:
    value = _get(cfg, key)
    _require(value in allowed, key, f"must be one of {sorted(allowed)}", value)


def _walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, value, declared type) of every leaf of a config dataclass."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check values that the type system cannot; raise `ConfigError` naming the key path.

    Every method's settings are checked by its own ``validate`` hook (`fedprivacy.methods`),
    so a bad value fails here, before anything starts, not inside a client."""
    from fedprivacy.data.federated import SOURCES
    from fedprivacy.data.partition import SCHEMES

    for key, value, _ in _walk(cfg):
        if isinstance(value, float):
            _require(math.isfinite(value), key, "must be a finite number", value)
    _choice(cfg, "data.source", SOURCES)
    _choice(cfg, "data.partition", SCHEMES)
    _choice(cfg, "evaluation.exposure", EXPOSURE_ESTIMATORS)
    _choice(cfg, "server.eval_source", SERVER_EVAL_SOURCES)
    _choice(cfg, "tracking.backend", TRACKING_BACKENDS)
    _choice(cfg, "model.adapter", ADAPTERS)
    positive = ["rounds", "train.steps", "train.batch_size", "train.eval_batch_size",
                "simulation.num_clients", "simulation.cpus_per_client", "data.train_per_client",
                "data.val_per_client", "data.max_length", "model.max_length",
                "strategy.min_clients", "server.eval_records",
                "evaluation.exposure_max_candidates"]
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
    _require(cfg.strategy.node_wait > 0, "strategy.node_wait", "must be > 0",
             cfg.strategy.node_wait)
    _require(cfg.strategy.min_clients >= 1, "strategy.min_clients", "must be >= 1",
             cfg.strategy.min_clients)
    _require(cfg.strategy.min_clients <= cfg.simulation.num_clients, "strategy.min_clients",
             f"must be <= simulation.num_clients ({cfg.simulation.num_clients})",
             cfg.strategy.min_clients)
    _require(cfg.data.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be > 0",
             cfg.data.dirichlet_alpha)
    _validate_ray_address(cfg.simulation)
    _validate_methods(cfg)
    if cfg.model.adapter == "lora":
        _validate_lora(cfg)
    if cfg.model.preset == "":
        _require(bool(cfg.model.name_or_path), "model.name_or_path",
                 "must be set when model.preset is empty", cfg.model.name_or_path)
    if cfg.data.node_paths:
        _validate_node_paths(cfg)
    if cfg.data.source == "facts":
        _validate_facts(cfg)
    if cfg.data.source == "concepts":
        _validate_concepts(cfg)
    if cfg.server.eval_source == "file":
        _require(bool(cfg.server.eval_path), "server.eval_path",
                 "must name a file when server.eval_source=file", cfg.server.eval_path)
    for key in ("client.fail_partitions", "client.slow_partitions"):
        for pid in _get(cfg, key):
            _require(0 <= pid < cfg.simulation.num_clients, key,
                     "partition ids must be in [0, num_clients)", pid)
    _require(cfg.client.slow_step_seconds >= 0, "client.slow_step_seconds", "must be >= 0",
             cfg.client.slow_step_seconds)
    _require(cfg.data.canary.heldout >= 0, "data.canary.heldout", "must be >= 0",
             cfg.data.canary.heldout)
    return cfg


def _validate_lora(cfg: ExperimentConfig) -> None:
    """``model.lora_*``, checked only with ``model.adapter=lora``."""
    mc = cfg.model
    _require(mc.lora_r >= 1, "model.lora_r", "must be >= 1", mc.lora_r)
    _require(mc.lora_alpha > 0, "model.lora_alpha", "must be > 0", mc.lora_alpha)
    _require(0 <= mc.lora_dropout < 1, "model.lora_dropout", "must be in [0, 1)", mc.lora_dropout)
    _require(bool(mc.lora_targets), "model.lora_targets", "must name at least one module",
             mc.lora_targets)
    # DEPN's zeroed neurons live in the frozen base, which only the server's base-edits carry
    # back to clients; a local-only run keeps each client's adapter alone and would lose them
    _require(not ("depn" in cfg.client.pipeline and cfg.strategy.name == "local"),
             "model.adapter", "lora with client.pipeline depn needs a server that aggregates "
             "(strategy.name local would drop the zeroed neurons after the first round)",
             mc.adapter)


def _validate_ray_address(sim: SimulationConfig) -> None:
    """``simulation.ray_address``: "", "auto" or HOST:PORT; an existing cluster keeps its size."""
    address = sim.ray_address
    host, _, port = address.rpartition(":")
    ok = address in ("", "auto") or (bool(host) and port.isdigit() and 0 < int(port) < 65536)
    _require(ok, "simulation.ray_address", "must be '' (a private local Ray), 'auto' or "
             "HOST:PORT of a running Ray cluster", address)
    if address:
        _require(sim.ray_cpus == 0, "simulation.ray_cpus", "must be 0 with "
                 "simulation.ray_address set (an existing cluster keeps its own size)",
                 sim.ray_cpus)


def _validate_facts(cfg: ExperimentConfig) -> None:
    from fedprivacy.data.conflicts import NAMES

    _require(cfg.data.partition != "by_task", "data.partition",
             "data.source=facts is one corpus: use iid or dirichlet", cfg.data.partition)
    facts = cfg.data.facts
    _require(1 <= facts.entities < len(NAMES), "data.facts.entities",
             f"must be in [1, {len(NAMES) - 1}]", facts.entities)
    shares = ["follow_context", "fact_share", "closed_share", "conflict_share", "mcq_share"]
    for name in shares:
        value = getattr(facts, name)
        _require(0 <= value <= 1, f"data.facts.{name}", "must be in [0, 1]", value)
    total = facts.fact_share + facts.closed_share + facts.conflict_share
    _require(total <= 1, "data.facts", "fact_share + closed_share + conflict_share must be "
             "<= 1", total)


def _validate_concepts(cfg: ExperimentConfig) -> None:
    from fedprivacy.data.concept_world import EVENTS

    _require(cfg.data.partition != "by_task", "data.partition",
             "data.source=concepts is one corpus: use iid or dirichlet", cfg.data.partition)
    world = cfg.data.concepts
    _require(len(world.emotions) >= 2 and set(world.emotions) <= set(EVENTS),
             "data.concepts.emotions", f"must name >= 2 of {sorted(EVENTS)}", world.emotions)
    _require(bool(world.shares) and min(world.shares) > 0, "data.concepts.shares",
             "must be positive shares, one per language", world.shares)
    for name in ("parallel_share", "neutral_share", "label_noise"):
        value = getattr(world, name)
        _require(0 <= value <= 1, f"data.concepts.{name}", "must be in [0, 1]", value)
    _require(world.parallel_share + world.neutral_share <= 1, "data.concepts",
             "parallel_share + neutral_share must be <= 1",
             world.parallel_share + world.neutral_share)


def _validate_node_paths(cfg: ExperimentConfig) -> None:
    """``data.node_paths``: one file per client, for node-local files data."""
    d = cfg.data
    _require(d.source == "files" and not d.path, "data.node_paths",
             "needs data.source=files and an empty data.path (node-local data)", d.node_paths)
    _require(len(d.node_paths) == cfg.simulation.num_clients, "data.node_paths",
             f"must name one file per client (simulation.num_clients="
             f"{cfg.simulation.num_clients})", d.node_paths)


def check_local_files(cfg: ExperimentConfig) -> None:
    """Files the config names exist on this machine (the launcher's check: in a deployment the
    server does not see the clients' files, so `validate` does not look)."""
    if cfg.data.source == "files" and cfg.data.path:  # "": every node names its own
        _require(Path(cfg.data.path).expanduser().is_file(), "data.path",
                 "file does not exist", cfg.data.path)
    for i, path in enumerate(cfg.data.node_paths):
        _require(Path(path).expanduser().is_file(), f"data.node_paths[{i}]",
                 "file does not exist", path)
    if cfg.server.eval_source == "file":
        _require(Path(cfg.server.eval_path).expanduser().is_file(), "server.eval_path",
                 "file does not exist", cfg.server.eval_path)


def _validate_methods(cfg: ExperimentConfig) -> None:
    """The pipeline and strategy name registered methods; every method's settings validate."""
    from fedprivacy.methods import registry

    key, pipeline = "client.pipeline", cfg.client.pipeline
    train = registry.of_kind("train")
    post = registry.of_kind("post")
    _require(len(pipeline) >= 1, key, "needs one training step", pipeline)
    _require(pipeline[0] in train, key,
             f"must start with one training step of {sorted(train)}", pipeline)
    for name in pipeline[1:]:
        _require(name in post, key,
                 f"after the training step only {sorted(post)} may follow", pipeline)
    _require(len(set(pipeline)) == len(pipeline), key, "a step appears twice", pipeline)
    _choice(cfg, "strategy.name", registry.of_kind("strategy"))
    stages, aligners = cfg.alignment.stages, registry.of_kind("align")
    for name in stages:
        _require(name in aligners, "alignment.stages", f"stages must be of {sorted(aligners)}",
                 stages)
    _require(len(set(stages)) == len(stages), "alignment.stages", "a stage appears twice",
             stages)
    _require(cfg.alignment.threads >= 0, "alignment.threads", "must be >= 0",
             cfg.alignment.threads)
    _require(cfg.alignment.every >= 0, "alignment.every", "must be >= 0 (0: after the last "
             "round only)", cfg.alignment.every)
    for method in registry.of_kind(*registry.KINDS).values():
        settings = method.settings_of(cfg)
        hook = getattr(settings, "validate", None)
        if hook is None:
            continue
        try:
            hook()
        except registry.SettingError as err:
            raise ConfigError(f"{method.config_key}.{err}") from err


_SCHEMA: dict[int, type] = {}


def schema() -> type[ExperimentConfig]:
    """`ExperimentConfig` with one settings section per registered method.

    ``client`` gains ``client.<section>`` for every client method, ``strategy`` gains
    ``strategy.<section>`` for every strategy, ``alignment`` gains ``alignment.<section>``
    for every alignment stage; rebuilt whenever the registry changes."""
    from fedprivacy.methods import registry

    version = registry.version()
    if version not in _SCHEMA:
        def sections(*kinds: registry.Kind) -> list[tuple[str, type, Any]]:
            return [(m.section or m.name, m.settings, field(default_factory=m.settings))
                    for m in registry.of_kind(*kinds).values() if m.settings is not None]

        client = dataclasses.make_dataclass("ClientConfig", sections("train", "post"),
                                            bases=(ClientConfig,))
        strategy = dataclasses.make_dataclass("StrategyConfig", sections("strategy"),
                                              bases=(StrategyConfig,))
        alignment = dataclasses.make_dataclass("AlignmentConfig", sections("align"),
                                               bases=(AlignmentConfig,))
        _SCHEMA.clear()
        _SCHEMA[version] = dataclasses.make_dataclass(
            "ExperimentConfig", [("client", client, field(default_factory=client)),
                                 ("strategy", strategy, field(default_factory=strategy)),
                                 ("alignment", alignment, field(default_factory=alignment))],
            bases=(ExperimentConfig,))
    return _SCHEMA[version]


def default_config() -> ExperimentConfig:
    """The embedded default config with every registered method's default settings."""
    return schema()()


def _structured() -> DictConfig:
    base = OmegaConf.structured(schema())
    OmegaConf.set_struct(base, True)
    return base


def _to_dataclass(merged: DictConfig) -> ExperimentConfig:
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, ExperimentConfig)
    return obj


def _upgrade_layer(layer: DictConfig, source: str) -> None:
    """Refuse renamed keys; expand the YAML shorthand ``alignment: [stage, ...]`` in place."""
    if isinstance(layer.get("alignment"), ListConfig):
        layer.alignment = {"stages": list(layer.alignment)}
    for old, new in RENAMED.items():
        if OmegaConf.select(layer, old, default=None) is not None:
            raise ConfigError(f"{old}: renamed to {new}{source}")


def load_config(path: str | Path | list[str | Path] | None = None,
                overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or several, later ones win; or the embedded default) and apply
    ``key=value`` overrides.

    Raises `ConfigError` for a missing file, an unknown key or a wrong type, naming the
    file or key path.
    """
    layers: list[DictConfig] = [_structured()]
    for item in [] if path is None else path if isinstance(path, list) else [path]:
        file = Path(item).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            layers.append(OmegaConf.load(file))
        except Exception as err:  # YAML syntax errors come in several types
            raise ConfigError(f"{file}: cannot parse YAML: {err}") from err
        _upgrade_layer(layers[-1], f" (in {file})")
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r}: expected key=value")
        # `key=` (what a shell makes of key='') means the empty string, not null;
        # `alignment=[...]` is the shorthand of `alignment.stages=[...]`
        overrides = [o + "''" if o.endswith("=") else o for o in overrides]
        overrides = ["alignment.stages=" + o.split("=", 1)[1] if o.startswith("alignment=")
                     else o for o in overrides]
        layers.append(OmegaConf.from_dotlist(overrides))
        _upgrade_layer(layers[-1], " (override)")
    try:
        merged = OmegaConf.merge(*layers)
        cfg = _to_dataclass(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        source = f" in {path}" if path else ""
        raise ConfigError(f"{key}: {err.msg if hasattr(err, 'msg') else err}{source}") from err
    validate(cfg)
    check_local_files(cfg)
    return cfg


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run folder's ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --- Flower run_config -------------------------------------------------------------------

def _is_scalar_type(tp: Any) -> bool:
    return tp in (bool, int, float, str)


def flatten(cfg: ExperimentConfig) -> FlatConfig:
    """Flatten to Flower's ``run_config``: dotted keys; lists become JSON strings."""
    return {key: value if _is_scalar_type(tp) else json.dumps(value)
            for key, value, tp in _walk(cfg)}


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

    for old, new in RENAMED.items():
        if old in flat:
            raise ConfigError(f"{old}: renamed to {new} (run_config)")
    decoded = decode(schema(), nested, "")
    try:
        merged = OmegaConf.merge(_structured(), OmegaConf.create(decoded))
        return validate(_to_dataclass(merged))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '?')}: {err}") from err
