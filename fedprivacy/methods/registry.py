"""The method registry: every method of the framework is one `Method`, registered once.

A method module (``fedprivacy/methods/<name>.py``) declares its settings dataclass, its client
step and/or its server side, its preflight check and the record keys it puts on the wire, and
calls `register`. The config schema (`fedprivacy.config`), the client pipeline, the strategy
factory and the server's end of run are loops over this registry, so adding a method touches no
list elsewhere (docs/ARCHITECTURE.md, "Adding a method").

Kinds:

- ``train``: a client training step; ``client.pipeline`` starts with exactly one.
- ``post``: a client post-training step (runs after the training step, before the reply).
- ``strategy``: a server strategy, chosen by ``strategy.name``.
- ``align``: a server alignment stage applied to the global model (``alignment.stages``,
  `fedprivacy.alignment.stage`), also by ``fedprivacy align`` on any saved model.

A method's settings live under ``client.<section>`` (client kinds), ``strategy.<section>``
(strategies) or ``alignment.<section>`` (alignment stages). Server-side code is named by an
import path (``"package.module:attribute"``) so that this library layer never imports the
Flower app layer; the app resolves it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fedprivacy.config import ExperimentConfig

Kind = Literal["train", "post", "strategy", "align"]
KINDS: tuple[Kind, ...] = ("train", "post", "strategy", "align")
ROOTS = {"train": "client", "post": "client", "strategy": "strategy", "align": "alignment"}
Metrics = dict[str, Any]


class SettingError(ValueError):
    """A method setting is invalid; ``key`` is the field name inside the method's section."""

    def __init__(self, key: str, message: str, value: Any = None) -> None:
        super().__init__(f"{key}: {message} (got {value!r})")
        self.key, self.message, self.value = key, message, value


def check(ok: bool, key: str, message: str, value: Any) -> None:
    """Raise `SettingError` for ``key`` unless ``ok`` (used by settings' ``validate``)."""
    if not ok:
        raise SettingError(key, message, value)


def check_choice(value: Any, key: str, allowed: Mapping[str, Any] | tuple[str, ...]) -> None:
    """``value`` must be one of ``allowed`` (the names the code that uses them defines)."""
    check(value in allowed, key, f"must be one of {sorted(allowed)}", value)


@dataclass(frozen=True)
class Method:
    """One registered method.

    - ``settings``: a dataclass (fields with help comments; an optional ``validate(self)`` that
      raises `SettingError`), placed in the config at ``client.<section>`` or
      ``strategy.<section>``; ``None`` for a method without settings.
    - ``client_step(job) -> metrics``: for ``train``/``post`` methods; it changes ``job.model``
      in place. Metrics are reported as ``<name>.<metric>``.
    - ``server``: ``"module:callable"``. For a strategy: ``build(ctx) -> Strategy``; for a client
      method: ``wrap(strategy, ctx) -> Strategy``, a server wrapper that the factory applies
      when the method is in the pipeline (`fedprivacy.strategies.factory`).
    - ``stage(ctx) -> metrics``: for ``align`` methods; it edits ``ctx.model`` in place and
      returns its report (`fedprivacy.alignment.stage.StageContext`).
    - ``finish(model, rounds) -> None``: applied by the server to the final global model before
      it is saved (``rounds``: the run's per-round records).
    - ``preflight(cfg, probe)``: raises a clear error before anything starts; ``probe`` has the
      first client's tokenizer, model and data (`fedprivacy.simulations.preflight.Probe`).
    - ``wire_keys``: the record keys the method puts on the wire (documentation and a check
      that no two methods claim one key).
    """

    name: str
    kind: Kind
    help: str
    settings: type | None = None
    section: str | None = None
    client_step: Callable[[Any], Metrics] | None = None
    stage: Callable[[Any], Metrics] | None = None
    server: str | None = None
    finish: Callable[[Any, list[dict]], None] | None = None
    preflight: Callable[[ExperimentConfig, Any], None] | None = None
    wire_keys: tuple[str, ...] = ()

    @property
    def config_key(self) -> str:
        """The dotted config path of this method's settings section."""
        return f"{ROOTS[self.kind]}.{self.section or self.name}"

    def settings_of(self, cfg: ExperimentConfig) -> Any:
        """This method's settings in a resolved config (``None`` without settings)."""
        if self.settings is None:
            return None
        node: Any = cfg
        for part in self.config_key.split("."):
            node = getattr(node, part)
        return node


_METHODS: dict[str, Method] = {}
_version = [0]


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a module calls this once, at import)."""
    if method.kind not in KINDS:
        raise ValueError(f"method {method.name!r}: kind must be one of {KINDS}, got {method.kind!r}")
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.settings is not None and not dataclasses.is_dataclass(method.settings):
        raise TypeError(f"method {method.name!r}: settings must be a dataclass")
    if method.kind in ("train", "post") and method.client_step is None:
        raise ValueError(f"method {method.name!r}: a {method.kind} method needs a client_step")
    if method.kind == "strategy" and method.server is None:
        raise ValueError(f"method {method.name!r}: a strategy needs a server builder")
    if method.kind == "align" and method.stage is None:
        raise ValueError(f"method {method.name!r}: an alignment stage needs a stage function")
    claimed = {key: m.name for m in _METHODS.values() if m.name != method.name
               for key in m.wire_keys}
    for key in method.wire_keys:
        if key in claimed:
            raise ValueError(f"method {method.name!r}: wire key {key!r} is {claimed[key]!r}'s")
    sections = {m.config_key: m.name for m in _METHODS.values()
                if m.settings is not None and m.name != method.name}
    if method.settings is not None and method.config_key in sections:
        raise ValueError(f"method {method.name!r}: config section {method.config_key} is "
                         f"{sections[method.config_key]!r}'s")
    _METHODS[method.name] = method
    _version[0] += 1
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _METHODS.pop(name, None)
    _version[0] += 1


def version() -> int:
    """Changes whenever the registry changes (the config schema is rebuilt then)."""
    _load_builtin()
    return _version[0]


def _load_builtin() -> None:
    from fedprivacy import methods  # noqa: F401  (imports every module of the package)


def get(name: str) -> Method:
    """The method called ``name``; KeyError lists the known ones."""
    _load_builtin()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(_METHODS)}")
    return _METHODS[name]


def of_kind(*kinds: Kind) -> dict[str, Method]:
    """Registered methods of the given kinds, by name, in registration order."""
    _load_builtin()
    return {n: m for n, m in _METHODS.items() if m.kind in kinds}


def configured(cfg: ExperimentConfig) -> list[Method]:
    """The methods a config uses: its pipeline's client methods, its strategy, then its
    alignment stages in order."""
    names = [*cfg.client.pipeline, cfg.strategy.name, *cfg.alignment.stages]
    return [get(name) for name in names]


def resolve(path: str) -> Any:
    """The object an import path ``"package.module:attribute"`` names."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
