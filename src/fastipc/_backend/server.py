"""The seam of the socket servers: what ``fastipc.server.Server`` asks of a backend's event
loop, one operation per loop turn or user call. ``fastipc._native.server.Loop`` (the C epoll
loop) and ``fastipc._pure.server.Loop`` (``selectors``) implement it; mypy --strict checks
both against :class:`Loop`.

A connection is named by its *key*, an int the backend chooses at accept time (unique for
the loop's lifetime as far as a stale key could matter: a key of a closed connection never
reaches a later connection on the same fd). Within one batch a connection is also named by
its fd, which is never reused inside a batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol, Union

__all__ = ["Batch", "Closed", "Connected", "Event", "Loop", "Messages", "Sends", "wake"]


class Connected(NamedTuple):
    """A client was accepted (reported before any of its messages)."""

    key: int
    fd: int
    peer: Any  # the decoded address: (host, port), (host, port, flow, scope), or a path


class Closed(NamedTuple):
    """A connection ended: ``errno`` 0 for a clean close (the peer's, the handler's), else
    what ended it (ECONNRESET, EMSGSIZE for an oversized frame, ETIMEDOUT when idle...)."""

    key: int
    fd: int
    errno: int


Event = Union[Connected, Closed]
Sends = list[tuple[int, bytes]]  # (key, payload): what handlers sent during a dispatch


# (fd, payload) in arrival order, to be iterated once; empty and false when there are none
Messages = Iterable[tuple[int, bytes]]

# What one turn found: (pre, messages, post, timer). ``pre``: control events before the
# messages (closes decided between turns, connects); ``messages``; ``post``: control events
# after them (closes found while reading); ``timer``: seconds until the loop needs a turn even
# without I/O (idle deadlines, listeners resting after EMFILE), -1.0 for none. A plain tuple,
# not a NamedTuple: building one is a Python-level call, on the path of every loop turn.
Batch = tuple[list[Event], Messages, list[Event], float]


class Loop(Protocol):
    """One event loop with its listeners and connections.

    ``__init__(framed, max_message_size, high_water, wake_r, wake_w, idle_timeout,
    max_connections)``: ``wake_r``/``wake_w`` is the caller's non-blocking pipe (it wakes
    the loop; the caller closes it after :meth:`close`); ``idle_timeout`` <= 0 and
    ``max_connections`` 0 mean no limit. ``poll`` runs in the serving thread; the other
    operations may come from any thread. The caller never calls anything after ``close``."""

    def __init__(self, framed: bool, max_message_size: int, high_water: int, wake_r: int,
                 wake_w: int, idle_timeout: float, max_connections: int) -> None: ...

    def listen(self, fd: int) -> None:
        """Accept connections on this listening socket (the caller owns and closes it)."""

    def fileno(self) -> int:
        """An fd that is readable whenever a turn would find something (epoll's)."""

    def poll(self, timeout: float, sends: Sends) -> Batch:
        """One turn: queue ``sends``, write out queued output, close finished and idle
        connections, wait up to ``timeout`` (C convention: -1 forever, 0 not at all), accept
        and read once each ready connection. A signal ends the wait with an empty batch."""

    def sendv(self, sends: Sends) -> None:
        """Queue ``sends`` and write out everything queued now (the end of a dispatch)."""

    def send(self, key: int, data: Any) -> None:
        """One send outside a dispatch: written at once as far as the kernel takes it, the
        rest queued. BrokenPipeError if the connection is gone."""

    def close_conn(self, key: int) -> None:
        """Close after the queued output; the Closed event comes with a later turn."""

    def pending(self, key: int) -> int:
        """Bytes queued for the connection and not yet taken by the kernel (0 if gone)."""

    def close(self) -> None:
        """Close every connection (no events) and free the loop."""


def wake(wake_w: int) -> None:
    """Wake the loop that polls the read end of this pipe (from any thread or a signal
    handler). A full pipe is fine: the loop is being woken anyway."""
    try:
        os.write(wake_w, b"\0")
    except BlockingIOError:
        pass
