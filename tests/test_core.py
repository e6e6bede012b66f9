"""The life cycle every public object shares (fastipc._core.Handle), on a real thread."""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from fastipc import _core
from fastipc._core import Handle, uses_handle
from helpers import InThread

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

    def blocked() -> None:
        try:
            r.wait()
        finally:
            r.left.set()

    t = InThread(blocked)
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


def _gen_pyi() -> ModuleType:
    """scripts/gen_pyi.py as a module (a source-tree check: an installed wheel has no csrc/)."""
    script = ROOT / "scripts" / "gen_pyi.py"
    if not script.exists() or not (ROOT / "csrc").exists():
        pytest.skip("needs the source tree (scripts/ and csrc/), not an installed wheel")
    if _core.NATIVE_ERROR is not None:
        pytest.skip(f"the stub is checked against the built extension ({_core.NATIVE_ERROR})")
    spec = importlib.util.spec_from_file_location("gen_pyi", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_type_stub_of_the_extension_matches_its_cdef() -> None:
    """src/fastipc/_fastipc.pyi's generated part is the cdef of csrc/*.h, and its handle part
    the built module (scripts/gen_pyi.py --check, as a developer runs it)."""
    script = Path(_gen_pyi().__file__)
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_type_stub_declares_every_handle_type_and_method() -> None:
    """Every type of fastipc._fastipc is in the stub with its base, each of its methods and
    properties, and the parameters its C docstring gives; the stub has nothing the module
    lacks (no module __getattr__ for names to fall to)."""
    gen = _gen_pyi()
    from fastipc import _fastipc

    text = gen.STUB.read_text()
    assert gen.handle_problems(text, _fastipc) == []
    handles = {n for n, t in vars(_fastipc).items()
               if isinstance(t, type) and issubclass(t, _fastipc.Handle)}
    assert handles >= {"SemHandle", "MqHandle", "QueueHandle", "PipeWriterHandle",
                       "PipeReaderHandle", "ClientHandle", "AsyncClientHandle",
                       "ShmWriterHandle", "ShmReaderHandle", "PublisherHandle",
                       "SubscriberHandle"}
    # the check sees what is missing, extra, or says other parameters
    worse = (text.replace("    def _keep_last(self) -> None: ...\n", "")
             .replace("timeout: Optional[float] = None, *,\n                  block: bool = True",
                      "timeout: Optional[float] = None, *,\n                  block: bool = False")
             + "\ndef __getattr__(name: str) -> Any: ...\n")
    assert sorted(p.split(":")[0] for p in gen.handle_problems(worse, _fastipc)) == [
        "MqHandle._keep_last", "QueueHandle.put_bytes",
        "the stub has __getattr__, the module does not"]


def test_status_codes_match_the_c_enum() -> None:
    """The statuses every mechanism shares (csrc/fastipc.h) have one value on both sides:
    one "need a larger buffer" code, not one per mechanism."""
    _, lib = _core.native()
    for name in ("FIPC_EOF", "FIPC_TOOBIG", "FIPC_CORRUPT", "FIPC_NEED"):
        assert getattr(lib, name) == getattr(_core, name), name
    stale = [n for n in dir(lib) if n.endswith("_NEED") and n != "FIPC_NEED"]
    assert stale == [] and not hasattr(lib, "FIPC_LARGE")
