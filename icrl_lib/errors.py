"""Errors a user can fix, printed by the CLI as one line (exit 2) instead of a traceback.

Each message names the parameter, file (and line) or folder at fault and what is allowed. They subclass
``ValueError`` so callers that already catch ``ValueError`` (notebooks, tests) keep working.
"""
from __future__ import annotations

import os


class UserError(ValueError):
    """A mistake in the input or the environment (parameter, data file, run folder, disk) that the user can fix."""


class RunLockedError(UserError):
    """Another process holds the run folder; a sweep skips such a run instead of computing it twice."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; the message says where it stopped and how to resume."""


def os_error(operation: str, path: str | os.PathLike, err: OSError, hint: str = "") -> UserError:
    """One-line :class:`UserError` for an OS error: the operation, the path and the system's reason."""
    reason = err.strerror or str(err)
    return UserError(f"{operation} {path} failed: {reason}" + (f"; {hint}" if hint else ""))


class ServerError(UserError):
    """An inference server that cannot be used: down, unreachable, refusing the request, or not the expected model.

    Raised only before a step is logged; the runner adds where the run stopped and how to resume."""


class ServerRefused(ServerError):
    """The server refused a request (a 4xx other than busy) or answered in a shape the route cannot read: running
    the same command again changes nothing. The message says what to change (the server's flag, a config field)."""
