"""Ask nodes for their public metadata (partition id, task description) with a query message."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprivacy import wire


def query_nodes(grid: Grid, node_ids: Iterable[int], timeout: float) -> dict[int, ConfigRecord]:
    """``{node: its public description}`` (``wire.TASK`` of the ClientApp's query reply) for
    the nodes that answered within ``timeout`` seconds."""
    msgs = [Message(RecordDict({wire.CONFIG: ConfigRecord({"what": "task"})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in node_ids]
    if not msgs:
        return {}
    out: dict[int, ConfigRecord] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error() or wire.TASK not in reply.content:
            log(WARNING, "node %d gave no description", reply.metadata.src_node_id)
            continue
        out[reply.metadata.src_node_id] = reply.content[wire.TASK]
    return out
