"""`GuardedStrategy`: a wrapper that makes any Message-API strategy survive bad clients.

Flower's FedAvg ends the whole run (`InconsistentMessageReplies`) when one reply is malformed.
The wrapper checks every reply first (`reply_check`), drops the bad ones with a logged reason,
notes the clients that did not answer within the round timeout, keeps per-client metrics and
timings for the run record, and hands only good replies to the wrapped strategy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedprivacy import wire
from fedprivacy.strategies.query import query_nodes
from fedprivacy.strategies.reply_check import (
    ArraySpec,
    array_spec,
    check_reply,
    majority_keys,
    metric_keys,
)
from fedprivacy.strategies.wrapper import StrategyWrapper


@dataclass
class RoundLog:
    """What happened in one round, as it goes into ``metrics.jsonl``."""

    round: int
    started: float = field(default_factory=time.time)
    clients: dict[str, dict[str, float | list[float]]] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def aggregate_client_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of every scalar metric, leaving out ids and the weight itself."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weight_key]) for m in metrics)
    out = MetricRecord()
    for key in metrics[0].keys():
        if key in (weight_key, wire.PARTITION_ID) or isinstance(metrics[0][key], list):
            continue
        out[key] = sum(float(m[key]) * float(m[weight_key]) for m in metrics) / total
    return out


class GuardedStrategy(StrategyWrapper):
    """Validate replies before the wrapped strategy aggregates them.

    ``round_offset`` shifts the round numbers the wrapped strategy sees (a resumed run goes on
    counting where it stopped). Valid replies reach the wrapped strategy in partition order,
    so the float sums of an aggregation do not depend on arrival order (same seed, same
    bits). Every drop names the client's partition: nodes are asked for theirs up front.
    ``query_timeout`` bounds that question (seconds). With ``round_timeout`` (seconds, the
    timeout the run gives `start`) every train message carries the round's deadline
    (``wire.DEADLINE``), at which a straggling client stops (`fedprivacy.deadline`).

    Each stage waits up to ``node_wait`` seconds for ``min_clients`` connected nodes, then
    goes on with those it has (none: the stage is skipped), and an aggregate needs
    ``min_clients`` valid replies, else the global model (or the round's client metrics) stays
    as it was: a dead node costs a bounded wait, never a run that hangs. The wrapped strategy
    must not wait for nodes itself (FedAvg: ``min_available_nodes=1``).

    With ``evaluate_with_train`` the train messages ask the clients to evaluate the received
    model first (``wire.EVALUATE_FIRST``); the evaluations ride on the train replies
    (``wire.EVALUATION``) and are the evaluate stage's replies, which sends nothing itself.
    """

    def __init__(self, inner: Strategy, weight_key: str = wire.NUM_EXAMPLES,
                 round_offset: int = 0, query_timeout: float = 60.0,
                 round_timeout: float | None = None, min_clients: int = 1,
                 node_wait: float = 120.0, evaluate_with_train: bool = False) -> None:
        super().__init__(inner)
        self.weight_key = weight_key
        self.min_clients, self.node_wait = min_clients, node_wait
        self.evaluate_with_train = evaluate_with_train
        self._evaluations: list[Message] = []  # evaluate replies that came with train replies
        self._seen: set[int] = set()  # nodes connected at some round of this run
        self.query_timeout = query_timeout
        self.round_timeout = round_timeout
        self.round_offset = round_offset
        self.rounds: dict[int, RoundLog] = {}
        self._spec: ArraySpec = {}
        self._sent: list[Message] = []
        self._partition_of: dict[int, int] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> GuardedStrategy: replies are validated; bad ones are dropped")
        self.inner.summary()

    def round_log(self, server_round: int) -> RoundLog:
        rnd = server_round + self.round_offset
        return self.rounds.setdefault(rnd, RoundLog(rnd))

    # --- train --------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        entry = self.round_log(server_round)
        entry.started = time.time()
        self._spec = array_spec(arrays)
        nodes = self._wait_for_nodes(entry, "train", grid)
        self._learn_partitions(grid, nodes)
        self._sent = list(self.inner.configure_train(server_round + self.round_offset, arrays,
                                                     config, grid)) if nodes else []
        self._note_gone(entry, grid, nodes)
        if self.round_timeout is not None:  # the clients stop their local work then
            ends = time.time() + self.round_timeout
            for msg in self._sent:
                msg.content[wire.CONFIG][wire.DEADLINE] = ends
        for msg in self._sent if self.evaluate_with_train else []:
            msg.content[wire.CONFIG][wire.EVALUATE_FIRST] = True
        return self._sent

    def _note_gone(self, entry: RoundLog, grid: Grid, nodes: list[int]) -> None:
        """Record the nodes seen earlier in the run that are no longer connected (a dead
        SuperNode Flower has dropped), by partition, once per round they miss."""
        connected = set(grid.get_node_ids())
        for node in sorted(self._seen - connected):
            self._drop(entry, "train", node, "not connected (it was earlier in the run)")
        self._seen |= set(nodes) & connected

    def _wait_for_nodes(self, entry: RoundLog, stage: str, grid: Grid) -> list[int]:
        """The connected nodes, once ``min_clients`` are or ``node_wait`` seconds have passed
        (then the shortfall is logged and recorded)."""
        ends = time.time() + self.node_wait
        while len(nodes := list(grid.get_node_ids())) < self.min_clients and time.time() < ends:
            time.sleep(min(1.0, max(ends - time.time(), 0.0)))
        if len(nodes) < self.min_clients:
            log(WARNING, "round %d %s: %d of the %d nodes strategy.min_clients asks for are "
                "connected after %.0f s (strategy.node_wait); going on with them", entry.round,
                stage, len(nodes), self.min_clients, self.node_wait)
            entry.extra.setdefault("nodes_short", {})[stage] = len(nodes)
        return nodes

    def _enough(self, entry: RoundLog, stage: str, valid: list[Message]) -> bool:
        """Whether ``valid`` has the ``min_clients`` replies an aggregate needs (else logged)."""
        if len(valid) >= self.min_clients:
            return True
        log(WARNING, "round %d %s: %d valid replies, fewer than strategy.min_clients (%d); "
            "nothing is aggregated", entry.round, stage, len(valid), self.min_clients)
        entry.extra.setdefault("not_aggregated", []).append(stage)
        return False

    def _learn_partitions(self, grid: Grid, nodes: list[int]) -> None:
        """Ask nodes whose partition is not known yet for it (their query reply)."""
        unknown = [n for n in nodes if n not in self._partition_of]
        for node, record in query_nodes(grid, unknown, self.query_timeout).items():
            if wire.PARTITION_ID in record:
                self._partition_of[node] = int(record[wire.PARTITION_ID])

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        entry = self.round_log(server_round)
        entry.durations["train_s"] = time.time() - entry.started
        replies = list(replies)
        if self.evaluate_with_train:
            self._evaluations = self._split_evaluations(replies)
        valid = self._keep_valid(entry, replies, "train", self._spec)
        if not self._enough(entry, "train", valid):
            log(WARNING, "round %d: the global model is unchanged", entry.round)
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round + self.round_offset, valid)
        entry.extra["train"] = dict(metrics or {})
        return arrays, metrics

    def _split_evaluations(self, replies: list[Message]) -> list[Message]:
        """Take the evaluation off each train reply that carries one, as an evaluate reply to
        the same instruction (so the train replies keep the one MetricRecord they must)."""
        sent = {m.metadata.message_id: m for m in self._sent}
        out = []
        for msg in replies:
            if msg.has_error() or wire.EVALUATION not in msg.content:
                continue
            record = msg.content[wire.EVALUATION]
            del msg.content[wire.EVALUATION]
            instruction = sent.get(msg.metadata.reply_to_message_id)
            if instruction is not None:
                out.append(Message(RecordDict({wire.METRICS: record}), reply_to=instruction))
        return out

    # --- evaluate -----------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        entry = self.round_log(server_round)
        entry.extra["evaluate_started"] = time.time()
        if self.evaluate_with_train:  # the train replies brought the evaluations
            return []
        nodes = self._wait_for_nodes(entry, "evaluate", grid)
        self._sent = list(self.inner.configure_evaluate(server_round + self.round_offset, arrays,
                                                        config, grid)) if nodes else []
        return self._sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        entry = self.round_log(server_round)
        started = entry.extra.pop("evaluate_started", time.time())
        entry.durations["evaluate_s"] = time.time() - started
        if self.evaluate_with_train:  # checked against the train instructions (self._sent)
            replies, self._evaluations = self._evaluations, []
        valid = self._keep_valid(entry, list(replies), "evaluate", None)
        if not self._enough(entry, "evaluate", valid):
            return None
        metrics = self.inner.aggregate_evaluate(server_round + self.round_offset, valid)
        entry.extra["evaluate"] = dict(metrics or {})
        return metrics

    # --- shared -------------------------------------------------------------------------
    def _client_name(self, node_id: int) -> str:
        pid = self._partition_of.get(node_id)
        return f"partition {pid}" if pid is not None else f"node {node_id}"

    def _drop(self, entry: RoundLog, stage: str, node_id: int, reason: str) -> None:
        who = self._client_name(node_id)
        log(WARNING, "round %d %s: dropped reply of %s: %s", entry.round, stage, who, reason)
        entry.dropped.append({"stage": stage, "node": node_id, "client": who, "reason": reason})

    def _keep_valid(self, entry: RoundLog, replies: list[Message], stage: str,
                    spec: ArraySpec | None) -> list[Message]:
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        answered: set[int] = set()
        candidates: list[Message] = []
        for msg in replies:
            node = dst_of.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            answered.add(node)
            reason = check_reply(msg, self.weight_key, spec)
            if reason:
                self._drop(entry, stage, node, reason)
            else:
                candidates.append(msg)
        for node in sorted(set(dst_of.values()) - answered):
            self._drop(entry, stage, node, "no reply within the round timeout")
        keys = majority_keys(candidates)
        valid = []
        for msg in candidates:
            if metric_keys(msg) != keys:
                diff = sorted(metric_keys(msg) ^ keys)
                self._drop(entry, stage, msg.metadata.src_node_id,
                           f"metric keys differ from the other clients: {diff}")
                continue
            valid.append(msg)
            self._record_client(entry, stage, msg)
        return sorted(valid, key=self._order)

    def _order(self, msg: Message) -> tuple[int, int]:
        """Partition id first (node id for a client that reports none)."""
        metrics = next(iter(msg.content.metric_records.values()))
        pid = metrics.get(wire.PARTITION_ID)
        return (int(pid) if pid is not None else 1 << 62, msg.metadata.src_node_id)

    def _record_client(self, entry: RoundLog, stage: str, msg: Message) -> None:
        metrics = next(iter(msg.content.metric_records.values()))
        pid = metrics.get(wire.PARTITION_ID)
        if pid is not None:
            self._partition_of[msg.metadata.src_node_id] = int(pid)
        name = str(int(pid)) if pid is not None else f"node-{msg.metadata.src_node_id}"
        row = entry.clients.setdefault(name, {})
        for key, value in metrics.items():
            if key != wire.PARTITION_ID:
                row[f"{stage}.{key}"] = ([float(v) for v in value] if isinstance(value, list)
                                         else float(value))
