"""One line for any error a run raises, as the CLI and a sweep's results report it."""

from __future__ import annotations

from fedprivacy.config import ConfigError


def describe(err: BaseException) -> str:
    """The error's message on one line (it names the key or file), with the file an
    ``OSError`` names if the message lacks it, and the error's type unless it is one of the
    project's own kinds (`ConfigError`, ``RuntimeError``, ``ValueError``), whose messages say
    all."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text += f": {err.filename}"
    if not isinstance(err, (ConfigError, RuntimeError, ValueError)):
        text = f"{type(err).__name__}: {text}"
    return text
