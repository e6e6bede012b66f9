"""The ``fastipc shm write|read``, ``fastipc ls`` and ``fastipc rm`` commands, run for real."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastipc import shm
from helpers import run_python

SHM = Path("/dev/shm")


def fastipc(*args: str, timeout: float = 30, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastipc", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]


@pytest.mark.parametrize("backend", ["native", "pure"])
def test_write_then_read(backend: str, name: str) -> None:
    """The writer starts first and waits until its reader has taken everything."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "fastipc", "--backend", backend, "shm", "write", name,
         "--timeout", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdin is not None
        writer.stdin.write("first line\nsecond line\n")
        writer.stdin.close()
        deadline = time.monotonic() + 20
        while not (SHM / name).exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        listing = fastipc("ls")
        assert listing.returncode == 0
        assert name in listing.stdout and "channel" in listing.stdout
        out = fastipc("--backend", backend, "shm", "read", name, "--timeout", "20")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["first line", "second line"]
        assert writer.wait(20) == 0
        assert "2 messages taken" in writer.stderr.read()  # type: ignore[union-attr]
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()  # type: ignore[union-attr]
        writer.stderr.close()  # type: ignore[union-attr]
    assert not (SHM / name).exists()


def test_read_times_out_without_writer(name: str) -> None:
    out = fastipc("shm", "read", name, "--timeout", "0.1")
    assert out.returncode == 2
    assert out.stderr.startswith("fastipc: error:")


def test_rm_and_stale(name: str) -> None:
    out = run_python(
        """
        import os, sys
        from fastipc import shm
        w = shm.Writer(sys.argv[1], capacity=4096)
        w.send(b"left behind")
        os._exit(0)  # dies without closing: the segment stays
        """,
        name,
    )
    assert out.returncode == 0, out.stderr
    assert (SHM / name).exists()
    listing = fastipc("ls")
    line = next(x for x in listing.stdout.splitlines() if name in x)
    assert "writer dead" in line
    out = fastipc("rm", "--stale", "--match", name)  # this test's only: others run too
    assert out.returncode == 0
    assert name in out.stdout
    assert not (SHM / name).exists()

    seg = shm.SharedMemory(name, size=100, create=True)
    seg.close()
    assert fastipc("rm", name).returncode == 0
    assert not (SHM / name).exists()
    out = fastipc("rm", name)
    assert out.returncode == 2 and "fastipc: error:" in out.stderr
    assert fastipc("rm").returncode == 2
    assert fastipc("rm", "a/b").returncode == 2


def test_rm_stale_spares_live_channels(name: str) -> None:
    with shm.Writer(name, capacity=4096):
        fastipc("rm", "--stale", "--match", name)
        assert (SHM / name).exists()


def test_describers_hook(name: str) -> None:
    """Another kind of segment plugs its describer in: ls lists it, rm --stale removes it
    when the describer says it is not alive, and channels keep their own describer."""
    from fastipc._cli import admin

    magic = b"TEST"

    def describe(path: str) -> admin.SegmentInfo | None:
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != magic:
            return None
        return admin.SegmentInfo("test-kind", Path(path).name, 8, None, head[4:] == b"live",
                                 "a segment of the test's own kind")

    live, dead = SHM / (name + "-live"), SHM / (name + "-dead")
    live.write_bytes(magic + b"live")
    dead.write_bytes(magic + b"dead")
    admin.register_describer(describe)
    try:
        with shm.Writer(name, capacity=4096):
            found = {e.name: e for e in admin.entries() if e.name.startswith(name)}
            assert found[name].kind == "channel" and found[name].alive
            assert found[live.name].kind == "test-kind" and found[live.name].alive
            assert not found[dead.name].alive
            admin.remove(type("Args", (), {"names": [], "stale": True, "match": name})())
            assert live.exists() and not dead.exists() and (SHM / name).exists()
    finally:
        admin._describers.remove(describe)
        live.unlink(missing_ok=True)
        dead.unlink(missing_ok=True)
