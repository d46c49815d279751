"""``fedavg``: Flower's FedAvg (McMahan et al. 2017), sample-weighted by ``num-examples``."""

from __future__ import annotations

from fedprivacy.methods.registry import Method, register

METHOD = register(Method(
    name="fedavg", kind="strategy", help="FedAvg: the average of the client models",
    server="fedprivacy.strategies.factory:build_fedavg"))
