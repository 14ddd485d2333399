"""User-facing errors: the CLI prints their message as a one-line reason and exits non-zero."""

import re


class AdaptError(Exception):
    """An error whose message is meant for the user (bad input, missing file, unreachable server)."""


class DataError(AdaptError):
    """A dataset could not be read or does not fit the request (empty folder, too few images, ...)."""


class BackboneError(AdaptError):
    """A backbone could not be created or its weights could not be loaded."""


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def first_line(exc: BaseException) -> str:
    """A short one-line reason for ``exc`` (connection failures boiled down to their errno text)."""
    text = str(exc).strip()
    if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
        errno = _ERRNO.search(text)
        return f"connection failed ({errno.group(0).strip() if errno else 'server unreachable'})"
    if "Read timed out" in text:
        return "the server did not answer in time (read timed out)"
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
