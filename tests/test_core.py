"""The life cycle every public object shares (fastipc._core.Handle), on a real thread."""

from __future__ import annotations

import threading

import pytest

from fastipc._core import Handle, uses_handle


class Resource(Handle):
    """A handle whose blocked call returns as soon as _wake() starts, before _wake() ends:
    the interleaving in which a woken call could free what _wake() still touches."""

    _what = "resource"

    def __init__(self) -> None:
        self.buffer: list[int] | None = [0]
        self.woken = threading.Event()
        self.left = threading.Event()
        self.freed = 0
        self._open_handle("pure")

    @uses_handle
    def wait(self) -> None:
        self.woken.wait()

    def _wake(self) -> None:
        self.woken.set()
        self.left.wait(1.0)  # the blocked call has returned and left by now
        assert self.buffer is not None, "freed while _wake() ran"
        self.buffer[0] += 1

    def _free(self) -> None:
        self.buffer = None
        self.freed += 1


def test_a_woken_call_leaving_does_not_free_under_wake() -> None:
    r = Resource()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            r.wait()
        except BaseException as exc:
            errors.append(exc)
        finally:
            r.left.set()

    t = threading.Thread(target=blocked)
    t.start()
    while not r._calls:
        threading.Event().wait(0.001)
    r.close()
    t.join(5)
    assert r.freed == 1 and r.buffer is None
    assert r.closed


def test_close_is_idempotent_and_frees_once_when_idle() -> None:
    r = Resource()
    r.close()
    r.close()
    assert r.freed == 1
    with pytest.raises(ValueError, match="resource"):
        r.wait()
