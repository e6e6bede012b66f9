"""The life cycle every public object shares (fastipc._core.Handle), on a real thread."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastipc import _core
from fastipc._core import Handle, uses_handle

ROOT = Path(__file__).resolve().parents[1]


class Resource(Handle):
    """A handle whose blocked call returns as soon as _wake() starts, before _wake() ends:
    the interleaving in which a woken call could free what _wake() still touches."""

    _what = "resource"
    _handle_type = "Handle"  # the native backend's objects count their calls in C

    def __init__(self, *, backend: str = "pure") -> None:
        self.buffer: list[int] | None = [0]
        self.woken = threading.Event()
        self.left = threading.Event()
        self.freed = 0
        self._open_handle(_core.resolve_backend(backend))

    def busy(self) -> int:
        return self._busy if self.backend == "native" else len(self._calls)  # type: ignore

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


def test_a_woken_call_leaving_does_not_free_under_wake(backend: str) -> None:
    r = Resource(backend=backend)
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
    while not r.busy():
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


def test_the_native_backend_counts_calls_in_the_handle(backend: str) -> None:
    r = Resource(backend=backend)
    assert isinstance(r, Resource)
    assert type(r).__name__ == "Resource"
    assert isinstance(r, _core._fastipc.Handle) == (backend == "native")
    r.woken.set()
    r.wait()
    assert r.busy() == 0 and not r.freed
    r.close()
    r.close()
    assert r.freed == 1 and r.closed
    with pytest.raises(ValueError, match="closed resource"):
        r.wait()
    assert "closed" in repr(r)


def test_a_dropped_object_is_freed_by_reference_counting_alone(backend: str) -> None:
    gc.disable()
    try:
        freed: list[int] = []

        class Dropped(Resource):
            def _free(self) -> None:
                freed.append(1)

        Dropped(backend=backend)
        assert freed == [1]
    finally:
        gc.enable()


def test_the_type_stub_of_the_extension_matches_its_cdef() -> None:
    """src/fastipc/_fastipc.pyi's generated part is the cdef of csrc/*.h (a source-tree check:
    an installed wheel has no csrc/)."""
    script = ROOT / "scripts" / "gen_pyi.py"
    if not script.exists() or not (ROOT / "csrc").exists():
        pytest.skip("needs the source tree (scripts/ and csrc/), not an installed wheel")
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_status_codes_match_the_c_enum() -> None:
    """The statuses every mechanism shares (csrc/fastipc.h) have one value on both sides:
    one "need a larger buffer" code, not one per mechanism."""
    _, lib = _core.native()
    for name in ("FIPC_EOF", "FIPC_TOOBIG", "FIPC_CORRUPT", "FIPC_NEED"):
        assert getattr(lib, name) == getattr(_core, name), name
    stale = [n for n in dir(lib) if n.endswith("_NEED") and n != "FIPC_NEED"]
    assert stale == [] and not hasattr(lib, "FIPC_LARGE")
