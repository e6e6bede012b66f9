"""Shared fixtures: both backends, unique names, and a leak check around every test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastipc import _core

BACKENDS = ["native", "pure"]


def pytest_configure(config: pytest.Config) -> None:
    """numpy's OpenBLAS starts a worker thread at import, which blocks no signal: a signal sent
    to the whole process (os.kill, sigqueue, an interval timer) may then go to it instead of
    to the thread under test, which is POSIX (README, "Signals") but not what these tests are
    about. One BLAS thread, set before the test modules (and numpy) are imported."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
SHM_DIR = Path("/dev/shm")
MQUEUE_DIR = Path("/dev/mqueue")  # listed only where the mqueue filesystem is mounted
# Queues are also checked by name, which needs no mount: the test's `name` and the names
# tests derive from it with these suffixes.
MQ_SUFFIXES = ("", "-absent", "-ping", "-pong", "-back")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every API test runs once per backend."""
    if request.param == "native" and _core.NATIVE_ERROR is not None:
        pytest.fail(f"native backend unavailable: {_core.NATIVE_ERROR}")
    return str(request.param)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Every awaitable runs on plain asyncio and on uvloop (helpers.run_on)."""
    return str(request.param)


@pytest.fixture(params=[("native", "pure"), ("pure", "native")], ids=["native-pure", "pure-native"])
def cross(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(sender backend, receiver backend) for data that crosses between the two."""
    return tuple(request.param)  # type: ignore[return-value]


# Names made here carry this run's pid, so that the leak check below looks only at this run's
# objects, not at those of another test run on the same machine.
PREFIX = f"fastipc-test-{os.getpid()}-"


@pytest.fixture
def name() -> str:
    """A fresh name for a named object (shm segment, queue, semaphore)."""
    return PREFIX + uuid.uuid4().hex[:12]


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short Unix socket path (pytest's tmp_path can pass the 107-byte limit)."""
    d = tempfile.mkdtemp(prefix="fipc-")
    try:
        yield os.path.join(d, "s.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _open_fds() -> dict[int, str]:
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            pass  # the directory's own fd, closed by now
    return fds


def _entries(directory: Path) -> set[str]:
    try:
        return {p.name for p in directory.iterdir() if p.name.startswith(PREFIX)}
    except OSError:
        return set()


def _queues_named(name: object) -> set[str]:
    """Those of `name` (+ MQ_SUFFIXES) that exist as message queues, found with mq_open (no
    /dev/mqueue mount needed) and unlinked, so that one leak does not fail later tests."""
    import posix_ipc

    found = set()
    for suffix in MQ_SUFFIXES if isinstance(name, str) else ():
        try:
            posix_ipc.MessageQueue("/" + name + suffix).close()
        except posix_ipc.ExistentialError:
            continue
        found.add(name + suffix)
        posix_ipc.unlink_message_queue("/" + name + suffix)
    return found


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test must leave no fd, /dev/shm entry or message queue behind."""
    fds = _open_fds()
    shm = _entries(SHM_DIR)
    mqs = _entries(MQUEUE_DIR)
    yield
    leaked_fds = {fd: target for fd, target in _open_fds().items() if fds.get(fd) != target}
    leaked_shm = _entries(SHM_DIR) - shm
    leaked_mqs = _entries(MQUEUE_DIR) - mqs
    leaked_mqs |= _queues_named(request.node.funcargs.get("name"))
    for entry in leaked_shm:  # clean up so that one leak does not fail every later test
        (SHM_DIR / entry).unlink(missing_ok=True)
    assert not leaked_fds, f"leaked file descriptors: {leaked_fds}"
    assert not leaked_shm, f"leaked /dev/shm entries: {sorted(leaked_shm)}"
    assert not leaked_mqs, f"leaked message queues: {sorted(leaked_mqs)}"
