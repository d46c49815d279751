"""The base of the project's strategy wrappers and the per-round record interface.

`RoundRecords` is how a strategy puts what it did in a round into the run record
(``metrics.jsonl``'s ``strategy`` field): it calls ``self.record(round, key=value)``, and the
server reads ``round_record(round)`` of the outermost strategy. `StrategyWrapper` delegates
every call to the strategy it wraps and merges the wrapped strategy's records into its own,
so wrappers stack (``GuardedStrategy(NeuronEditMerge(FewFedWeight(...)))``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class RoundRecords:
    """Per-round records of a strategy, keyed by the round the strategy was called with."""

    def record(self, server_round: int, **values: Any) -> None:
        """Add ``values`` to the record of ``server_round``."""
        if not hasattr(self, "_round_records"):
            self._round_records: dict[int, dict[str, Any]] = {}
        self._round_records.setdefault(server_round, {}).update(values)

    def round_record(self, server_round: int) -> dict[str, Any]:
        """What this strategy recorded for ``server_round`` (a copy)."""
        return dict(getattr(self, "_round_records", {}).get(server_round, {}))


class StrategyWrapper(Strategy, RoundRecords):
    """Delegates to ``inner``; subclasses override only what they change."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def round_record(self, server_round: int) -> dict[str, Any]:
        """The wrapped strategy's record of the round, updated with this wrapper's."""
        inner = (self.inner.round_record(server_round)
                 if isinstance(self.inner, RoundRecords) else {})
        return {**inner, **super().round_record(server_round)}
