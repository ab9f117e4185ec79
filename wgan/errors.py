"""The one exception type that the CLI turns into a one-line message and exit code 2, and how a
full disk is recognised wherever it surfaces."""

from __future__ import annotations

import errno

# ENOSPC: the filesystem is full; EDQUOT: the user's quota is.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


class UserError(Exception):
    """Bad input from the user: the message is one line that says what to do."""


class OutOfSpace(UserError):
    """A write met a full disk (or quota): the message names the location and what to do."""


def no_space(err: BaseException | None) -> BaseException | None:
    """The full-disk error behind ``err``, if any: ``err`` itself, its causes and contexts, or the
    workers' errors that Ray wraps (``worker_failures``); by errno, or by the text pyarrow, torch
    and Ray carry it in (a remote error arrives as a message, and torch's writer as a RuntimeError
    whose context holds the OSError)."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "errno", None) in _NO_SPACE_ERRNOS or any(t in str(current) for t in _NO_SPACE_TEXT):
            return current
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None),
                    *(getattr(current, "worker_failures", None) or {}).values()]
    return None


def first_line(error: BaseException, *, named: bool = False) -> str:
    """The first line of an error's text (its type's name when it has none), for one-line messages
    and tags; ``named``: prefixed with the type's name."""
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text[0]}" if named else text[0]
