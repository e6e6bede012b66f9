"""fastipc.pipe: anonymous pipes and FIFOs, on both backends, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastipc import pipe
from helpers import close_ends_call, run_python, start_python

# ---------------------------------------------------------------- basics


def test_send_recv_roundtrip(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        for msg in (b"hello", b"", b"\0" * 3, bytes(range(256))):
            w.send(msg)
        assert [r.recv(timeout=1) for _ in range(4)] == [
            b"hello",
            b"",
            b"\0" * 3,
            bytes(range(256)),
        ]


def test_accepts_bytes_like(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        w.send(bytearray(b"ba"))
        w.send(memoryview(b"xmvx")[1:3])
        import array

        w.send(array.array("i", [1, 2]))
        assert r.recv(1) == b"ba"
        assert r.recv(1) == b"mv"
        assert r.recv(1) == array.array("i", [1, 2]).tobytes()


def test_raw_write_read(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        assert w.write(b"abc") == 3
        assert w.write(memoryview(b"def")) == 3
        assert r.read(2, timeout=1) == b"ab"
        assert r.read(timeout=1) == b"cdef"
        w.close()
        assert r.read(timeout=1) == b""


def test_eof_after_writer_closes(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    w.send(b"last")
    w.close()
    assert r.recv(timeout=1) == b"last"
    with pytest.raises(EOFError):
        r.recv(timeout=1)
    assert list(r) == []
    r.close()


def test_iteration_yields_until_eof(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    for i in range(5):
        w.send(str(i).encode())
    w.close()
    assert list(r) == [b"0", b"1", b"2", b"3", b"4"]
    r.close()


def test_frame_cut_short_is_not_delivered(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    w.send(b"whole")
    w.write(b"\0\0\0\x10half")  # announces 16 bytes, delivers 4, then the writer leaves
    w.close()
    assert r.recv(timeout=1) == b"whole"
    with pytest.raises(EOFError):
        r.recv(timeout=1)
    r.close()


@pytest.mark.parametrize("size", [65531, 65532, 65533, 1 << 20, 5 * (1 << 20) + 7])
def test_messages_larger_than_pipe_and_buffer(backend: str, size: int) -> None:
    r, w = pipe.pipe(backend=backend)
    data = os.urandom(size)
    with r, w:
        t = threading.Thread(target=w.send, args=(data,))
        t.start()
        got = r.recv(timeout=10)
        t.join(10)
        assert got == data
        w.send(b"after")
        assert r.recv(timeout=1) == b"after"


def test_large_message_survives_a_timeout_midway(backend: str) -> None:
    r, w = pipe.pipe(size=1 << 20, backend=backend)
    data = os.urandom(300_000)
    with r, w:
        w.write(len(data).to_bytes(4, "big") + data[:100_000])
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.05)
        w.write(data[100_000:])
        assert r.recv(timeout=1) == data


def test_pipe_size(backend: str) -> None:
    r, w = pipe.pipe(size=1 << 18, backend=backend)
    with r, w:
        assert w.pipe_size >= 1 << 18
        assert r.pipe_size == w.pipe_size
        w.pipe_size = 1 << 16
        assert w.pipe_size == 1 << 16


def test_fileno_and_flags(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        for end in (r, w):
            assert not os.get_inheritable(end.fileno())
        for end in (r, w):  # every wait is a poll that close() can end (a wake-up fd)
            assert not os.get_blocking(end.fileno())
        assert r.backend == backend and w.backend == backend


# ---------------------------------------------------------------- timeouts


def test_recv_timeout(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"0\.1"):
            r.recv(timeout=0.1)
        assert 0.09 <= time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError):
            r.recv(timeout=0)
        with pytest.raises(TimeoutError):
            r.read(timeout=0)


def test_write_timeout_reports_progress(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        size = w.pipe_size
        with pytest.raises(TimeoutError) as info:
            w.write(b"x" * (size + 10), timeout=0.1)
        assert info.value.characters_written == size
        with pytest.raises(TimeoutError):
            w.write(b"y", timeout=0)


def _drain_and_resend(r: pipe.PipeReader, w: pipe.PipeWriter) -> None:
    """Empty the pipe a writer filled, then check that a message goes through whole."""
    assert r.read(w.pipe_size, timeout=1)
    while True:
        try:
            r.read(timeout=0)
        except TimeoutError:
            break
    w.send(b"message", timeout=1)
    assert r.recv(timeout=1) == b"message"


def test_send_timeout_before_any_byte_keeps_writer_usable(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        w.write(b"x" * w.pipe_size)  # fill the pipe exactly
        with pytest.raises(TimeoutError):
            w.send(b"message", timeout=0.05)
        assert not w.closed
        _drain_and_resend(r, w)


def test_send_cut_short_by_timeout_closes_writer(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        big = b"z" * (w.pipe_size * 2)
        with pytest.raises(TimeoutError):
            w.send(big, timeout=0.1)
        assert w.closed  # the stream would be desynchronised otherwise
        with pytest.raises(EOFError):
            while True:
                r.recv(timeout=1)


def test_eintr_retries_with_remaining_time(backend: str) -> None:
    """A signal whose handler returns does not end a timed wait early, nor extend it."""
    calls = []
    old = signal.signal(signal.SIGALRM, lambda *a: calls.append(1))
    r, w = pipe.pipe(backend=backend)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.4)
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        r.close()
        w.close()
    assert len(calls) >= 3
    assert 0.39 <= elapsed < 1.5


def test_signal_handler_exception_interrupts(backend: str) -> None:
    """A signal handler that raises during a blocked recv or send: the exception propagates,
    and the end goes on working, the stream intact."""

    class Stop(Exception):
        pass

    def handler(*a: object) -> None:
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    r, w = pipe.pipe(backend=backend)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Stop):
            r.recv(timeout=5)
        w.send(b"after")
        assert r.recv(timeout=1) == b"after"
        w.write(b"f" * w.pipe_size)          # full: the next send waits before any byte
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Stop):
            w.send(b"message", timeout=5)
        assert not w.closed                  # nothing went: the stream is in step
        _drain_and_resend(r, w)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        r.close()
        w.close()


def test_blocking_recv_releases_the_gil(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(r.recv(timeout=5)))
        t.start()
        counter = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            counter += 1  # the main thread keeps running while the other waits
        w.send(b"wake")
        t.join(5)
        assert got == [b"wake"] and counter > 1000


# ---------------------------------------------------------------- SIGPIPE


def test_broken_pipe_raises(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send(b"x")
    with pytest.raises(BrokenPipeError):
        w.write(b"x")
    w.close()


SIGPIPE_CHILD = """
import signal, sys
from fastipc import pipe
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # what many CLI tools do
r, w = pipe.pipe(backend=sys.argv[1])
r.close()
for call in (w.send, w.write):
    try:
        call(b"x" * 100)
    except BrokenPipeError:
        print("BrokenPipeError")
# nothing is left pending: unblocking SIGPIPE now must not kill us
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGPIPE])
print("alive")
"""


def test_sigpipe_default_disposition_does_not_kill(backend: str) -> None:
    proc = run_python(SIGPIPE_CHILD, backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BrokenPipeError", "BrokenPipeError", "alive"]


def test_sigpipe_already_blocked_is_left_pending(backend: str) -> None:
    code = """
import signal, sys
from fastipc import pipe
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
signal.raise_signal(signal.SIGPIPE)          # the caller's own, pending while blocked
r, w = pipe.pipe(backend=sys.argv[1])
r.close()
try:
    w.send(b"x")
except BrokenPipeError:
    pass
print(signal.SIGPIPE in signal.sigpending())
"""
    proc = run_python(code, backend)
    assert proc.returncode == 0, proc.stderr
    # the caller blocked it: a pending SIGPIPE is theirs, and the write leaves it pending
    # (whether the write raised one of its own, as write() does, or none, as
    # pwritev2(RWF_NOSIGNAL) does natively on Linux 6.18 and later)
    assert proc.stdout.strip() == "True"


# ---------------------------------------------------------------- processes

CHILD_READER = """
import sys, hashlib
from fastipc import pipe
r = pipe.PipeReader(int(sys.argv[1]), backend=sys.argv[2])
n = 0
h = hashlib.sha256()
for msg in r:
    n += 1
    h.update(len(msg).to_bytes(4, "big") + msg)
print(n, h.hexdigest())
"""


def _messages() -> list[bytes]:
    rnd = __import__("random").Random(7)
    sizes = [0, 1, 64, 4091, 4092, 4093, 65536, 200_000] + [
        rnd.randrange(0, 3000) for _ in range(500)
    ]
    return [rnd.randbytes(s) if hasattr(rnd, "randbytes") else os.urandom(s) for s in sizes]


def test_cross_process_and_backend(cross: tuple[str, str]) -> None:
    """The article's pipe_test: the parent writes, a child process reads (both backends)."""
    import hashlib

    sender, receiver = cross
    r, w = pipe.pipe(backend=sender)
    rfd = r.fileno()
    os.set_inheritable(rfd, True)
    proc = start_python(CHILD_READER, str(rfd), receiver, pass_fds=(rfd,))
    r.close()
    h = hashlib.sha256()
    msgs = _messages()
    with w:
        for m in msgs:
            w.send(m, timeout=10)
            h.update(len(m).to_bytes(4, "big") + m)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == [str(len(msgs)), h.hexdigest()]


def test_child_writer_killed_midstream(backend: str) -> None:
    """A writer killed with SIGKILL: every whole message arrives, then EOFError."""
    r, w = pipe.pipe(backend=backend, size=1 << 16)
    wfd = w.fileno()
    os.set_inheritable(wfd, True)
    code = """
import os, sys
from fastipc import pipe
w = pipe.PipeWriter(int(sys.argv[1]), backend=sys.argv[2])
i = 0
while True:
    w.send(i.to_bytes(8, "big") * 100)
    i += 1
"""
    proc = start_python(code, str(wfd), backend, pass_fds=(wfd,))
    w.close()
    with r:
        for expected in range(50):
            assert r.recv(timeout=10) == expected.to_bytes(8, "big") * 100
        proc.kill()
        proc.wait(10)
        n = 50
        with pytest.raises(EOFError):
            while True:
                assert r.recv(timeout=10) == n.to_bytes(8, "big") * 100
                n += 1
    proc.communicate()


def test_max_message_size_is_checked_before_allocating(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        r.max_message_size = 1000
        w.send(b"a" * 1000)
        assert r.recv(timeout=1) == b"a" * 1000
        w.write((2**32 - 1).to_bytes(4, "big"))  # a hostile 4 GiB announcement
        with pytest.raises(OSError) as info:
            r.recv(timeout=1)
        assert info.value.errno == __import__("errno").EMSGSIZE


# ---------------------------------------------------------------- FIFOs


def test_fifo_between_processes(cross: tuple[str, str], tmp_path: Path) -> None:
    sender, receiver = cross
    path = tmp_path / "fifo"
    code = """
import sys
from fastipc import pipe
f = pipe.FIFO(sys.argv[1], create=False, backend=sys.argv[2])
w = f.open_writer(timeout=10)
for i in range(100):
    w.send(b"msg %d" % i)
w.close()
"""
    with pipe.FIFO(path, create=True, backend=receiver) as fifo:
        assert path.is_fifo() and oct(path.stat().st_mode & 0o777) == oct(0o600 & ~_umask())
        proc = start_python(code, str(path), sender)
        with fifo.open_reader(timeout=20) as r:
            assert list(r) == [b"msg %d" % i for i in range(100)]
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    assert path.exists()  # close() does not unlink
    pipe.FIFO(path, create=False).unlink()
    assert not path.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fifo_open_timeouts_leave_nothing_behind(backend: str, tmp_path: Path) -> None:
    fifo = pipe.FIFO(tmp_path / "f", create=True, backend=backend)
    threads = threading.active_count()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fifo.open_writer(timeout=0.1)
    with pytest.raises(TimeoutError):
        fifo.open_reader(timeout=0.1)
    with pytest.raises(TimeoutError):
        fifo.open_writer(timeout=0)
    assert time.monotonic() - t0 < 2
    assert threading.active_count() <= threads  # no thread left waiting for a peer
    fifo.unlink()
    fifo.close()


def test_fifo_reader_waits_for_writer(backend: str, tmp_path: Path) -> None:
    fifo = pipe.FIFO(tmp_path / "f", create=True, backend=backend)
    got: list[pipe.PipeReader] = []
    t = threading.Thread(target=lambda: got.append(fifo.open_reader(timeout=5)))
    t.start()
    time.sleep(0.1)
    assert not got  # still waiting: no writer yet
    w = fifo.open_writer(timeout=5)
    t.join(5)
    (r,) = got
    w.send(b"hi")
    assert r.recv(timeout=1) == b"hi"
    r.close()
    w.close()
    fifo.unlink()


def test_fifo_create_and_attach_errors(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    with pytest.raises(FileNotFoundError):
        pipe.FIFO(path, create=False, backend=backend)
    f = pipe.FIFO(str(path), create=True, backend=backend)
    with pytest.raises(FileExistsError):
        pipe.FIFO(path, create=True, backend=backend)
    regular = tmp_path / "regular"
    regular.write_text("")
    with pytest.raises(ValueError, match="not a FIFO"):
        pipe.FIFO(regular, create=False, backend=backend)
    with pytest.raises(TypeError):
        pipe.FIFO(123, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pipe.FIFO("a\0b", backend=backend)
    f.close()
    f.close()
    with pytest.raises(ValueError):
        f.open_reader(timeout=0)
    f.unlink()


# ---------------------------------------------------------------- bad input


def test_bad_input(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        for bad in ("text", 42, None, [1], memoryview(b"abcd")[::2]):
            with pytest.raises(TypeError):
                w.send(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                w.write(bad)  # type: ignore[arg-type]
        for bad_t in (-1, -0.5, float("nan")):
            with pytest.raises(ValueError):
                r.recv(timeout=bad_t)
            with pytest.raises(ValueError):
                w.send(b"x", timeout=bad_t)
        with pytest.raises(TypeError):
            r.recv(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            r.read(-1)
        with pytest.raises(TypeError):
            r.read(1.5)  # type: ignore[arg-type]
        assert r.read(0) == b""
    for bad_size in (0, -1, 2**40):
        with pytest.raises(ValueError):
            pipe.pipe(size=bad_size, backend=backend)
    with pytest.raises(TypeError):
        pipe.pipe(size="big", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pipe.pipe(backend="rust")
    with pytest.raises(ValueError):
        pipe.PipeReader(-1, backend=backend)
    with pytest.raises(OSError):
        pipe.PipeReader(10_000, backend=backend)


def test_pipe_size_over_the_limit(backend: str) -> None:
    """Past /proc/sys/fs/pipe-max-size only a privileged process (CAP_SYS_RESOURCE) succeeds;
    anyone else gets a PermissionError that names the limit and how to raise it."""
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    try:
        r, w = pipe.pipe(size=limit * 2, backend=backend)
    except PermissionError as exc:
        assert "pipe-max-size" in str(exc) and str(limit) in str(exc)
    else:
        assert w.pipe_size >= limit * 2
        r.close()
        w.close()


def test_closed_objects(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    r.close()
    w.close()
    r.close()
    w.close()
    assert r.closed and w.closed
    for call in (
        lambda: r.recv(),
        lambda: r.read(),
        r.fileno,
        lambda: w.send(b"x"),
        lambda: w.write(b"x"),
        w.fileno,
        lambda: r.pipe_size,
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError), r:
        pass
    assert "closed" in repr(r)


def test_native_requested_but_unavailable_message() -> None:
    code = """
import sys
sys.modules["fastipc._fastipc"] = None  # the extension cannot load
try:
    import fastipc
except ImportError as exc:
    print("ImportError:", exc)
"""
    proc = run_python(code, env={**os.environ, "FASTIPC_BACKEND": "native"})
    assert "ImportError: FASTIPC_BACKEND=native" in proc.stdout


def test_auto_falls_back_with_one_warning() -> None:
    code = """
import sys, warnings
sys.modules["fastipc._fastipc"] = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastipc
    from fastipc import pipe
    r, w = pipe.pipe()
    w.send(b"ok")
    print(fastipc.BACKEND, r.recv(1), len(caught))
"""
    proc = run_python(code, env={**os.environ, "FASTIPC_BACKEND": "auto"})
    assert proc.stdout.split() == ["pure", "b'ok'", "1"], proc.stderr


def test_backend_env_selects_default() -> None:
    for value in ("pure", "native"):
        proc = run_python(
            "import fastipc; print(fastipc.BACKEND)", env={**os.environ, "FASTIPC_BACKEND": value}
        )
        assert proc.stdout.strip() == value, proc.stderr
    proc = run_python("import fastipc", env={**os.environ, "FASTIPC_BACKEND": "fast"})
    assert "ImportError" in proc.stderr


def test_cli_pipe_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc", "pipe", "hello world"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello world" in proc.stdout


# ---------------------------------------------------------------- batches


def test_send_many_recv_many(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        w.send_many([b"a", bytearray(b"bb"), memoryview(b"ccc"), b""])
        w.send(b"single")
        assert r.recv_many(timeout=1) == [b"a", b"bb", b"ccc", b"", b"single"]
        w.send_many([b"%d" % i for i in range(10)])
        assert r.recv_many(3, timeout=1) == [b"0", b"1", b"2"]
        assert r.recv(timeout=1) == b"3"
        assert r.recv_many(timeout=1) == [b"%d" % i for i in range(4, 10)]
        w.send_many([])
        w.send_many(iter([b"gen"]))
        assert r.recv_many(timeout=1) == [b"gen"]
        with pytest.raises(TimeoutError):
            r.recv_many(timeout=0)


def test_batches_with_large_messages(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    big = os.urandom(5 << 20)
    with r, w:
        t = threading.Thread(target=w.send_many, args=([b"1", big, b"2"],))
        t.start()
        got: list[bytes] = []
        while len(got) < 3:
            got += r.recv_many(timeout=10)
        t.join(10)
        assert got == [b"1", big, b"2"]


def test_batches_bad_input(backend: str) -> None:
    r, w = pipe.pipe(backend=backend)
    with r, w:
        for bad in (b"one message", "text", 5):
            with pytest.raises(TypeError):
                w.send_many(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            w.send_many([b"ok", "text"])  # type: ignore[list-item]
        for n in (0, -1):
            with pytest.raises(ValueError):
                r.recv_many(n, timeout=0)
        with pytest.raises(TypeError):
            r.recv_many(1.0, timeout=0)  # type: ignore[arg-type]
        w.send(b"still fine")
        assert r.recv_many(timeout=1) == [b"still fine"]
    with pytest.raises(ValueError, match="closed"):
        w.send_many([b"x"])
    with pytest.raises(ValueError, match="closed"):
        r.recv_many()


def test_batches_between_processes(cross: tuple[str, str]) -> None:
    sender, receiver = cross
    r, w = pipe.pipe(backend=sender)
    rfd = r.fileno()
    os.set_inheritable(rfd, True)
    code = """
import sys
from fastipc import pipe
r = pipe.PipeReader(int(sys.argv[1]), backend=sys.argv[2])
got = []
try:
    while True:
        got += r.recv_many(100, timeout=20)
except EOFError:
    pass
assert got == [b"%d" % i for i in range(20000)], len(got)
print("ok", len(got))
"""
    proc = start_python(code, str(rfd), receiver, pass_fds=(rfd,))
    r.close()
    with w:
        for start in range(0, 20000, 500):
            w.send_many([b"%d" % i for i in range(start, start + 500)], timeout=20)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["ok", "20000"]


def test_cli_bench_runs_and_passes_its_options() -> None:
    cmd = [sys.executable, "-m", "fastipc", "bench", "--quick", "--only", "pipe", "--trials", "1",
           "--match", "fastipc native", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    rows = json.loads(proc.stdout)
    assert {r["workload"] for r in rows} >= {"64 B ping-pong", "64 B stream", "64 B batches"}
    assert all(r["impl"] == "fastipc native" and r["median"] > 0 for r in rows)
    bad = subprocess.run([sys.executable, "-m", "fastipc", "pipe", "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


# ---------------------------------------------------------------- close from another thread

CLOSE_WHILE_BLOCKED = r"""
import os, sys, threading, time
from fastipc import pipe

backend, op = sys.argv[1], sys.argv[2]
r, w = pipe.pipe(backend=backend)
if op.startswith("reader."):
    obj, call = r, getattr(r, op.split(".")[1])
elif op == "writer.send":
    obj = w
    w.write(b"f" * w.pipe_size)  # the pipe is full: the next send waits for room
    call = lambda: w.send(b"x" * 100_000)
elif op == "writer.write":
    obj = w
    w.write(b"f" * w.pipe_size)
    call = lambda: w.write(b"x" * 100_000)
outcome = []

def blocked():
    t0 = time.monotonic()
    try:
        call()
        outcome.append("returned")
    except ValueError as exc:
        outcome.append("ValueError %.3f" % (time.monotonic() - t0))
    except BaseException as exc:
        outcome.append(repr(exc))

t = threading.Thread(target=blocked)
t.start()
time.sleep(0.3)          # the call is waiting now
t0 = time.monotonic()
obj.close()
t.join(5)
assert not t.is_alive(), "the blocked call did not end"
assert outcome and outcome[0].startswith("ValueError"), outcome
waited = time.monotonic() - t0
assert waited < 1.0, waited
# the fd numbers are free again: a new pipe may reuse them, and nothing touches it
r2, w2 = pipe.pipe(backend=backend)
w2.send(b"fresh")
assert r2.recv(timeout=1) == b"fresh"
for o in (r, w, r2, w2):
    o.close()
print("ok")
"""


@pytest.mark.parametrize(
    "op", ["reader.recv", "reader.read", "reader.recv_many", "writer.send", "writer.write"]
)
def test_close_from_another_thread_ends_a_blocked_call(backend: str, op: str) -> None:
    """Closing an end while another thread is blocked in it: that call ends promptly with
    ValueError, and nothing it uses is freed or closed under it (run in a child process, so
    that a crash fails the test instead of killing pytest)."""
    proc = run_python(CLOSE_WHILE_BLOCKED, backend, op, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_close_while_receiving_a_large_message(backend: str) -> None:
    """The reader is closed while it receives a message larger than its read-ahead (the
    payload goes straight into the message's own buffer)."""
    code = r"""
import sys, threading, time
from fastipc import pipe
r, w = pipe.pipe(backend=sys.argv[1])
w.write((8 << 20).to_bytes(4, "big") + b"x" * 1000)   # a frame of 8 MiB, cut short for now
out = []
def blocked():
    try:
        r.recv()
    except ValueError:
        out.append("ValueError")
t = threading.Thread(target=blocked)
t.start()
time.sleep(0.3)
r.close()
t.join(5)
assert out == ["ValueError"], out
w.close()
print("ok")
"""
    proc = run_python(code, backend, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_close_ends_a_fifo_waiting_for_its_peer(backend: str, side: str, tmp_path: Path) -> None:
    fifo = pipe.FIFO(tmp_path / "f", create=True, backend=backend)
    error = close_ends_call(
        lambda: (fifo.open_reader if side == "reader" else fifo.open_writer)(timeout=10),
        fifo.close, settle=0.2, within=1)
    assert isinstance(error, ValueError), error
    fifo.unlink()


def test_fifo_attaches_by_default(backend: str, tmp_path: Path) -> None:
    """FIFO(path) attaches, as every named object (create=False); create=True creates."""
    path = tmp_path / "f"
    with pytest.raises(FileNotFoundError):
        pipe.FIFO(path, backend=backend)
    assert not path.exists()
    with pipe.FIFO(path, create=True, backend=backend):
        pass
    with pipe.FIFO(path, backend=backend) as again:
        assert again.path == str(path)
    again.unlink()


# ---------------------------------------------------------------- exceptions raised into calls

INTERRUPTED_RECV = r"""
import os, signal, sys, time
from fastipc import pipe

backend, writer_backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r, w = pipe.pipe(backend=backend)

def message(i):
    size = (70_000, 300_000, 5_000_000, 64)[i % 4]   # past the read-ahead, and past 4 MiB
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]

pid = os.fork()
if pid == 0:
    r.close()
    with pipe.PipeWriter(os.dup(w.fileno()), backend=writer_backend) as out:
        w.close()
        for i in range(n):
            out.send(message(i))      # the pipe holds 64 KiB: the reader waits mid-message
    os._exit(0)
w.close()

class Interrupt(Exception):
    pass

armed = [False]   # raise only into recv(): an exception elsewhere would end this script
last = [0.0]

def handler(*args):
    # every 0.5 ms a signal (the call retries after it), every 5 ms or more one that raises
    # (not more often: a step that cannot be cut, copying a 5 MB message out, must fit)
    if armed[0] and time.monotonic() - last[0] > 0.005:
        armed[0] = False
        last[0] = time.monotonic()
        raise Interrupt

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
got, interrupts = [], 0
while True:
    try:
        armed[0] = True
        m = r.recv(timeout=30)
        armed[0] = False
        got.append(m)
    except Interrupt:
        interrupts += 1
    except EOFError:
        break
signal.setitimer(signal.ITIMER_REAL, 0)
index = [int.from_bytes(m[:4], "big") for m in got]
for i, m in zip(index, got):
    assert m == message(i), (i, len(m))          # whole: never torn or mixed
assert index == sorted(set(index)), index        # in order, never twice
# the native backend hands a message over in the call that consumes it: nothing is lost;
# the pure one may drop the one message an exception hits between consuming and returning
# it (README, "Exceptions raised into a receive")
assert len(got) == n if backend == "native" else len(got) >= n - interrupts, (len(got), n)
r.close()
os.waitpid(pid, 0)
print(interrupts)
"""


def test_exception_raised_into_recv_never_tears_a_message(cross: tuple[str, str]) -> None:
    """A signal handler that raises, again and again, while recv() waits in the middle of
    messages larger than the read-ahead: every message still arrives whole, once, in order."""
    sender, receiver = cross
    proc = run_python(INTERRUPTED_RECV, receiver, sender, "40", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 0  # the handler did interrupt receives


FORKED_COPIES = r"""
import os, sys, time
from fastipc import pipe
backend = sys.argv[1]
r, w = pipe.pipe(backend=backend)
pid = os.fork()
if pid == 0:                      # child: waits on its copy of the read end
    w.close()                     # its copy of the write end: the parent's must not notice
    try:
        ok = r.recv(timeout=10) == b"x" * 300_000
    except BaseException as exc:
        print("child:", repr(exc))
        ok = False
    os._exit(0 if ok else 1)
r.close()                         # the parent's copy: the child's wait must not notice
time.sleep(0.3)
w.send(b"x" * 300_000, timeout=10)  # waits for room while the child reads
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
w.close()
print("ok")
"""


def test_closing_a_forked_copy_leaves_the_other_process_alone(backend: str) -> None:
    """After fork() each process holds a copy of both ends; closing one's copy (which
    wakes that process's blocked calls) must not end the other process's waits."""
    proc = run_python(FORKED_COPIES, backend, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


TWO_THREADS = r"""
import sys, threading, time
from fastipc import pipe
backend, side = sys.argv[1], sys.argv[2]
r, w = pipe.pipe(backend=backend)
if side == "reader":
    first = lambda: r.recv(timeout=5)
    second = lambda: r.recv_many(timeout=1)
else:
    w.write(b"f" * w.pipe_size)          # full: a send waits for room
    first = lambda: w.send(b"a" * 200_000, timeout=5)
    second = lambda: w.send(b"b" * 10, timeout=1)
out = []
t = threading.Thread(target=lambda: out.append(first()))
t.start()
time.sleep(0.2)                            # the first thread waits in the call now
try:
    second()
    print("second call ran")
except OSError as exc:
    print("errno", exc.errno)
if side == "reader":
    w.send(b"x")
else:
    assert r.read(w.pipe_size, timeout=1)
    while t.is_alive():  # drain until the first send has gone
        try:
            r.read(1 << 20, timeout=0.2)
        except TimeoutError:
            pass
t.join(5)
assert not t.is_alive()
r.close(); w.close()
"""


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_a_second_thread_in_the_same_end_is_refused(backend: str, side: str) -> None:
    """An end is used by one thread at a time: a second thread's call while the first is
    in a call raises OSError(EBUSY) instead of sharing the read-ahead buffer (a crash, in
    C) or interleaving frames (in a child process, so that a crash fails the test)."""
    proc = run_python(TWO_THREADS, backend, side, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "errno 16"  # EBUSY


# ---------------------------------------------------------------- the native handle


def test_per_message_methods_are_the_handles(backend: str) -> None:
    """Natively, send/recv/... are C methods of the end's handle type, found before the
    pure backend's Python methods: no Python frame, nothing stored in the instance."""
    import inspect

    from fastipc import _fastipc

    r, w = pipe.pipe(backend=backend)
    with r, w:
        for end, names, handle in ((w, ("send", "write", "send_many"), "PipeWriterHandle"),
                                   (r, ("recv", "read", "recv_many"), "PipeReaderHandle")):
            assert not set(names) & set(vars(end))
            for name in names:
                method = getattr(type(end), name)
                if backend == "native":
                    assert method is getattr(_fastipc, handle).__dict__[name]
                    assert not inspect.isfunction(method)
                else:
                    assert inspect.isfunction(method)
                # one signature on both backends: the pure backend's, less `self`
                public = pipe.PipeWriter if end is w else pipe.PipeReader
                pure_sig = inspect.signature(getattr(public, name))
                assert [(p.name, p.default) for p in inspect.signature(
                    getattr(end, name)).parameters.values()] == [
                    (p.name, p.default) for p in list(pure_sig.parameters.values())[1:]]
        assert not hasattr(w, "recv") and not hasattr(r, "send")


def test_every_per_message_call_of_a_closed_end_is_valueerror(backend: str) -> None:
    """Whatever its arguments: the closed check comes first."""
    r, w = pipe.pipe(backend=backend)
    r.close()
    w.close()
    for call in (
        lambda: w.send(b"x"),
        lambda: w.send("not bytes", timeout=-1),
        lambda: w.write(b"x"),
        lambda: w.send_many([b"x"]),
        lambda: w.send_many(b"one message"),
        lambda: r.recv(),
        lambda: r.recv(timeout="bad"),
        lambda: r.read(5),
        lambda: r.read(-1),
        lambda: r.recv_many(),
        lambda: r.recv_many(0),
        lambda: list(r),
    ):
        with pytest.raises(ValueError, match="closed Pipe"):
            call()


def _outcomes(calls: tuple[Callable[[], object], ...]) -> list[str]:
    out = []
    for call in calls:
        try:
            call()
            out.append("returned")
        except Exception as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def _bad_calls(r: pipe.PipeReader, w: pipe.PipeWriter) -> tuple[list[str], list[str]]:
    """Bad calls whose message, then whose type only, the backends share."""
    same = _outcomes((
        lambda: w.send("text"),  # type: ignore[arg-type]
        lambda: w.send(memoryview(b"abcd")[::2]),
        lambda: w.send(b"x", timeout=-1),
        lambda: w.send(b"x", timeout=float("nan")),
        lambda: w.send(b"x", timeout="1"),  # type: ignore[arg-type]
        lambda: w.write("text"),  # type: ignore[arg-type]
        lambda: w.write(b"x", timeout=-0.5),
        lambda: w.send_many(b"xx"),
        lambda: w.send_many(["x"]),
        lambda: w.send_many(5),  # type: ignore[arg-type]
        lambda: w.send_many([b"a"], timeout=-2),
        lambda: r.recv(timeout=-1),
        lambda: r.recv(timeout=float("nan")),
        lambda: r.read(-1),
        lambda: r.read(1.5),  # type: ignore[arg-type]
        lambda: r.read(True),
        lambda: r.read(2**40),
        lambda: r.read(4, timeout="x"),  # type: ignore[arg-type]
        lambda: r.recv_many(0),
        lambda: r.recv_many("3"),  # type: ignore[arg-type]
        lambda: r.recv_many(3, timeout=float("nan")),
    ))
    # the same type; the message comes from the interpreter (pure) or from the handle's
    # argument parser (native), and for a non-buffer from _core.byte_view or fipc_h_buffer
    same_type = [o.split(":")[0] for o in _outcomes((
        lambda: w.send(42),
        lambda: w.send_many([b"a", 2]),
        lambda: w.send(),  # type: ignore[call-arg]
        lambda: w.send(b"x", 1, 2),  # type: ignore[call-arg]
        lambda: w.send(b"x", bogus=1),  # type: ignore[call-arg]
        lambda: r.recv(tmout=1),  # type: ignore[call-arg]
        lambda: r.recv_many(1, 2, 3),  # type: ignore[call-arg]
    ))]
    return same, same_type


def test_bad_arguments_agree_across_backends() -> None:
    """Bad arguments raise the same exception, with the same message, on both backends."""
    results = []
    for backend in ("native", "pure"):
        r, w = pipe.pipe(backend=backend)
        with r, w:
            results.append(_bad_calls(r, w))
    (native, native_types), (pure, pure_types) = results
    assert native == pure
    assert all(o.startswith(("TypeError", "ValueError")) for o in native), native
    assert native_types == pure_types == ["TypeError"] * 7


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_dropping_the_last_reference_closes_at_once(backend: str, tmp_path: Path) -> None:
    """No reference cycle keeps an end alive: with the garbage collector off, dropping the
    last reference closes its fd at once (natively, with its wake-up eventfd)."""
    import gc

    before = set(os.listdir("/proc/self/fd"))
    gc.disable()
    try:
        r, w = pipe.pipe(backend=backend)
        w.send(b"x")
        w.write((8 << 20).to_bytes(4, "big") + b"y" * 1000)  # a large frame, begun
        assert r.recv(timeout=1) == b"x"
        with pytest.raises(TimeoutError):
            r.recv(timeout=0)                # the reader holds the part that came
        fds = [r.fileno(), w.fileno()]
        del r, w
        assert not any(_fd_open(fd) for fd in fds)
        fifo = pipe.FIFO(tmp_path / "f", create=True, backend=backend)
        reader_fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_NONBLOCK)
        end = fifo.open_writer(timeout=1)
        fd = end.fileno()
        del end
        assert not _fd_open(fd)
        os.close(reader_fd)
        fifo.close()
    finally:
        gc.enable()
    assert set(os.listdir("/proc/self/fd")) <= before | {str(n) for n in range(3)}


# ---------------------------------------------------------------- one vocabulary


def _drain(r: pipe.PipeReader) -> list[bytes]:
    """Every message until the end of the stream."""
    got: list[bytes] = []
    try:
        while True:
            got += r.recv_many(timeout=5)
    except EOFError:
        return got


def test_partial_send_many_says_messages_sent(cross: tuple[str, str]) -> None:
    """A batch that times out part way raises TimeoutError with ``messages_sent``: exactly
    the messages the reader gets (the one cut short closed the writer: end of stream)."""
    sender, receiver = cross
    rfd, wfd = os.pipe()
    r = pipe.PipeReader(rfd, backend=receiver)
    w = pipe.PipeWriter(wfd, backend=sender)
    with r, w:
        batch = [bytes([i % 256]) * 1000 for i in range(3 * w.pipe_size // 1004)]
        with pytest.raises(TimeoutError) as info:
            w.send_many(batch, timeout=0.1)
        sent = info.value.messages_sent  # type: ignore[attr-defined]
        assert isinstance(sent, int) and 0 < sent < len(batch)
        assert info.value.characters_written > sent * 1004  # type: ignore[attr-defined]
        assert w.closed  # a message was cut short
        assert _drain(r) == batch[:sent]


def test_send_many_to_a_reader_that_left_says_messages_sent(backend: str) -> None:
    """The reader goes part way through a batch: BrokenPipeError with ``messages_sent``,
    the count of whole messages that went into the pipe before (0 when nothing went)."""
    r, w = pipe.pipe(backend=backend)
    size = w.pipe_size
    batch = [b"m" * 996] * (2 * size // 1000)
    threading.Timer(0.1, r.close).start()
    with w, pytest.raises(BrokenPipeError) as info:
        w.send_many(batch, timeout=5)
    assert info.value.messages_sent == size // 1000  # type: ignore[attr-defined]
    r, w = pipe.pipe(backend=backend)
    r.close()
    with w, pytest.raises(BrokenPipeError) as info:
        w.send_many([b"x", b"y"], timeout=5)
    assert info.value.messages_sent == 0  # type: ignore[attr-defined]


def test_fifo_close_leaves_the_path_and_unlink_removes_it(backend: str,
                                                           tmp_path: Path) -> None:
    """close() (and the end of a with block) leaves the FIFO; another FIFO object opens it
    and data goes through; unlink() works on an open and on a closed FIFO, and
    FileNotFoundError once the path is gone."""
    path = tmp_path / "f"
    with pipe.FIFO(path, create=True, backend=backend) as made:
        pass
    assert made.closed and path.is_fifo()
    again = pipe.FIFO(str(path), backend=backend)
    assert again.path == str(path)
    got: list[bytes] = []

    def read() -> None:
        with again.open_reader(timeout=5) as r:
            got.extend(r)

    reader = threading.Thread(target=read)
    reader.start()
    with again.open_writer(timeout=5) as w:
        w.send(b"through the second object")
    reader.join(5)
    assert got == [b"through the second object"]
    again.unlink()  # open
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        again.unlink()
    again.close()
    made.close()
    with pipe.FIFO(path, create=True, backend=backend) as third:
        pass
    third.unlink()  # closed
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        third.unlink()
