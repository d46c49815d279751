"""``local``: the local-only baseline. Each client keeps training its own model from round to
round; the server still averages, for the record, but clients ignore the global model."""

from __future__ import annotations

from fedprivacy.methods.registry import Method, register

KEEP_MODEL_KEY = "local.keep-model"  # train/evaluate config: use and keep the node's own model
STATE_KEY = "local-model"  # node-local state (Context.state): the client's own model


METHOD = register(Method(
    name="local", kind="strategy", help="local-only baseline: every client trains alone",
    server="fedprivacy.strategies.local:build", wire_keys=(KEEP_MODEL_KEY,)))
