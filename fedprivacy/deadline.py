"""The round deadline of a client's local work.

The server sends each train message with the wall-clock time by which the round ends
(``wire.DEADLINE``, UNIX seconds; deployments assume clocks synchronised, e.g. by NTP). A reply
after it is dropped anyway, so every training loop calls `checkpoint` once per optimizer step
and stops with `DeadlineExceeded` once the deadline has passed: a straggler frees its
simulation worker (or SuperNode) when its round is over instead of working into the next one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[tuple[float | None, float]] = ContextVar("fedprivacy_deadline",
                                                               default=(None, 0.0))


class DeadlineExceeded(RuntimeError):
    """The round's deadline passed while the client was still working."""


@contextmanager
def deadline(at: float | None, step_delay: float = 0.0) -> Iterator[None]:
    """Local work inside this context stops at ``at`` (None: no deadline). ``step_delay``
    seconds are slept at every checkpoint: fault injection that makes a straggler."""
    token = _DEADLINE.set((at, step_delay))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def checkpoint() -> None:
    """Call once per unit of local work (an optimizer step): raise past the deadline."""
    at, delay = _DEADLINE.get()
    if delay > 0:
        time.sleep(delay)
    if at is not None and time.time() > at:
        raise DeadlineExceeded(f"the round's deadline passed {time.time() - at:.1f} s ago; "
                               "local work stopped")
