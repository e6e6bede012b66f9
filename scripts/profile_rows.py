"""Profile the benchmark rows below their goals: fastipc's side and its peer's, per message.

Subcommands (ROW: ``mq``, ``pipe``, ``shm``, ``shmpp``; IMPL: ``fastipc`` and the row's peer,
``posix_ipc``, ``handframed`` or ``cring``; ``fastipc-c`` for mq: the handle's receive
without the Python frame around it):

``callgrind ROW IMPL [N] [BATCH]``
    User-space instructions per message (one send and one receive), in all and per function
    (self cost): ``inproc`` under valgrind's callgrind at N and 2N messages, subtracted, so
    that start-up and import cancel out. Load-independent; kernel time is not in it.

``inproc ROW IMPL [N] [BATCH]``
    One process, no waiting: BATCH sends, then BATCH receives (BATCH 1: one loop of send
    and receive, a ping-pong's shape), N messages in all. ``cring`` is the C ring's put/get
    (``bench/c/shm_ring.c``) in a one-process harness.

``counts ROW IMPL [N]``
    ``run`` under ``perf record`` of the kernel's tracepoints (every system call, its
    failures, every context switch): per process, the calls per message by name and the
    switches (slept: it waited; preempted). Far lighter than strace.

``sides ROW IMPL[,IMPL...] [ROUNDS]``
    Wall time of one send and of one receive, each side alone, in one process, the
    implementations alternating round by round; the best round of each (kernel included).

``kernel [ROUNDS]``
    The rows' system calls alone, from C: a pipe write as ``write`` and as
    ``pwritev2(RWF_NOSIGNAL)``, to a pipe never polled and to one polled once; ``mq_send``
    and ``mq_receive``. Best of ROUNDS rounds, variants alternating.

``run ROW IMPL [N]``
    The row's two-process loop, as ``fastipc bench`` runs it (the same functions), with the
    parent's context switches and CPU time. ``busy`` is the CPU-bound-thread row.

``busy [N]``
    That row taken apart, placements alternating: no busy thread, the bench's (on the
    sender's CPU), a busy process instead (no GIL shared), a busy thread free to use both
    CPUs, and a sender that keeps the GIL (``send(m, 0)`` retried); the rate, the CPU share
    of the sender's and the busy thread's, the busy thread's gaps (time without the GIL or
    its CPU), the sender's waits (each releases the GIL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MSG = b"x" * 64

# ---------------------------------------------------------------------------- one process


def _mq_pair(impl: str) -> tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], None]]:
    from fastipc.bench import mq as bmq

    kind = bmq._fastipc("native") if impl.startswith("fastipc") else bmq.POSIX_IPC
    send, recv, close = bmq._one(kind)
    if impl == "fastipc-c":  # the handle's receive itself, without the Python frame around it
        from fastipc._fastipc import MqHandle

        recv = MqHandle.receive.__get__(recv.__self__)
    return send, recv, close


def _pipe_pair(impl: str) -> tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], None]]:
    from fastipc.bench import pipe as bpipe

    make = bpipe._fastipc("native") if impl == "fastipc" else bpipe._os_pipe
    psend, _precv, _csend, crecv, pobjs, cobjs = make()

    def close() -> None:
        bpipe._close(pobjs)
        bpipe._close(cobjs)

    return psend, crecv, close  # the parent's send reaches the child's receive


def _shm_pair(impl: str) -> tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], None]]:
    from fastipc import shm

    name = f"fastipc-prof-{os.getpid()}"
    w = shm.Writer(name, backend="native")
    r = shm.Reader(name, backend="native")

    def close() -> None:
        r.close()
        w.close()

    return w.send, r.recv, close


PAIRS = {"mq": _mq_pair, "pipe": _pipe_pair, "shm": _shm_pair, "shmpp": _shm_pair}

C_HARNESS = r"""
#define main shm_ring_main
#include "shm_ring.c"
#undef main
int main(int argc, char **argv)
{
    long n = atol(argv[1]), batch = atol(argv[2]);
    struct ring *r = mmap(NULL, sizeof(struct ring), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        die("mmap");
    char msg[64] = {1}, out[64];
    uint64_t head = 0, tail = 0, ch = 0;
    for (long i = 0; i < n; i += batch) {
        for (long j = 0; j < batch; j++)
            put(r, &head, msg, 64);
        for (long j = 0; j < batch; j++)
            get(r, &tail, &ch, out);
    }
    return out[0] == 1 ? 0 : 1;
}
"""


KERNEL_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifndef RWF_NOSIGNAL
#define RWF_NOSIGNAL 0x00000100
#endif
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
/* The system calls of the pipe and mq rows, alone, one process, best of ROUNDS rounds with
 * the variants alternating: a 68-byte frame written with write() or pwritev2(RWF_NOSIGNAL),
 * to a pipe never polled or polled once (as a reader that waited in ppoll leaves it: the
 * kernel then wakes the poll queue on every write), read back 64 frames at a time; a
 * 64-byte message sent and received on a POSIX queue of depth 10, 8 at a time. */
int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 400;
    signal(SIGPIPE, SIG_IGN);
    long n = 12800;
    int plain[2], polled[2];
    if (pipe(plain) || pipe(polled))
        return 1;
    struct pollfd pf = {polled[0], POLLIN, 0};
    poll(&pf, 1, 0);
    char buf[68] = {0}, rb[65536];
    struct iovec iov = {buf, 68};
    const char *names[4] = {"write, pipe never polled", "write, pipe polled once",
                            "pwritev2(RWF_NOSIGNAL), never polled",
                            "pwritev2(RWF_NOSIGNAL), polled once (fastipc's case)"};
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int r = 0; r < rounds; r++)
        for (int mode = 0; mode < 4; mode++) {
            int *p = (mode & 1) ? polled : plain;
            double t0 = now();
            for (long i = 0; i < n; i += 64) {
                for (int j = 0; j < 64; j++) {
                    ssize_t w = mode < 2 ? write(p[1], buf, 68)
                                         : pwritev2(p[1], &iov, 1, -1, RWF_NOSIGNAL);
                    if (w != 68)
                        return 1;
                }
                size_t got = 0;
                while (got < 64 * 68) {
                    ssize_t k = read(p[0], rb, sizeof rb);
                    if (k <= 0)
                        return 1;
                    got += (size_t)k;
                }
            }
            double dt = (now() - t0) / n * 1e9;
            if (dt < best[mode])
                best[mode] = dt;
        }
    for (int m = 0; m < 4; m++)
        printf("  pipe: %-52s %5.0f ns per 68-byte frame (+1/64 of a read)\n", names[m], best[m]);
    char name[64];
    snprintf(name, sizeof name, "/fastipc-prof-%d", (int)getpid());
    struct mq_attr at = {0};
    at.mq_maxmsg = 10;
    at.mq_msgsize = 64;
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK, 0600, &at);
    if (q == (mqd_t)-1)
        return 1;
    mq_unlink(name);
    char msg[64] = {1}, out[64];
    unsigned prio;
    double bs = 1e9, br = 1e9;
    for (int r = 0; r < rounds; r++) {
        double ts = 0, tr = 0;
        for (int k = 0; k < 256; k++) {
            double t0 = now();
            for (int i = 0; i < 8; i++)
                if (mq_send(q, msg, 64, 0))
                    return 1;
            double t1 = now();
            for (int i = 0; i < 8; i++)
                if (mq_receive(q, out, 64, &prio) != 64)
                    return 1;
            ts += t1 - t0;
            tr += now() - t1;
        }
        if (ts / 2048 * 1e9 < bs)
            bs = ts / 2048 * 1e9;
        if (tr / 2048 * 1e9 < br)
            br = tr / 2048 * 1e9;
    }
    printf("  mq: mq_send %.0f ns, mq_receive %.0f ns per call (64 B, depth 10, 8 at a time)\n",
           bs, br);
    return 0;
}
"""


def kernel(rounds: int) -> None:
    """The system calls of the pipe and mq rows measured alone, from C (KERNEL_C)."""
    out = Path(tempfile.gettempdir()) / f"fastipc-prof-{os.getuid()}"
    out.mkdir(mode=0o700, exist_ok=True)
    (out / "kernel.c").write_text(KERNEL_C)
    subprocess.run(["cc", "-O2", "-o", str(out / "kernel"), str(out / "kernel.c"), "-lrt"],
                   check=True)
    subprocess.run([str(out / "kernel"), str(rounds)], check=True)


def c_ring_binary() -> Path:
    """The C ring's put/get (bench/c/shm_ring.c, as compiled for the bench: -O2) in one
    process, for callgrind."""
    import fastipc.bench

    src = Path(fastipc.bench.__file__).with_name("c")
    out = Path(tempfile.gettempdir()) / f"fastipc-prof-{os.getuid()}"
    out.mkdir(mode=0o700, exist_ok=True)
    harness = out / "ring_inproc.c"
    harness.write_text(C_HARNESS)
    binary = out / "ring_inproc"
    subprocess.run(["cc", "-O2", "-g", "-D_GNU_SOURCE", f"-I{src}", "-o", str(binary),
                    str(harness)], check=True)
    return binary


def inproc(row: str, impl: str, n: int, batch: int) -> None:
    send, recv, close = PAIRS[row](impl)
    try:
        if batch == 1:  # a ping-pong's shape: one loop, as the bench's
            for _ in range(n):
                send(MSG)
                recv()
            return
        for _ in range(n // batch):
            for _ in range(batch):
                send(MSG)
            for _ in range(batch):
                recv()
    finally:
        close()


def sides(row: str, impls: list[str], rounds: int = 200, batch: int = 0) -> None:
    """Wall time of one send and of one receive, each side alone, in one process: BATCH
    sends timed, then BATCH receives timed, the implementations alternating round by round;
    the best round of each. No waiting, no other process: what a call costs when it is the
    only thing running (kernel time included, unlike callgrind)."""
    batch = batch or {"mq": 8, "pipe": 256, "shm": 256, "shmpp": 256}[row]
    pairs = {impl: PAIRS[row](impl) for impl in impls}
    best: dict[tuple[str, str], float] = {}
    clock = time.perf_counter
    try:
        for _ in range(rounds):
            for impl, (send, recv, _close) in pairs.items():
                ts = tr = 0.0
                for _ in range(max(1, 2048 // batch)):
                    t0 = clock()
                    for _ in range(batch):
                        send(MSG)
                    t1 = clock()
                    for _ in range(batch):
                        recv()
                    t2 = clock()
                    ts, tr = ts + t1 - t0, tr + t2 - t1
                n = max(1, 2048 // batch) * batch
                for side, t in (("send", ts), ("receive", tr)):
                    key = (impl, side)
                    best[key] = min(best.get(key, 1e9), t / n * 1e9)
    finally:
        for _, _, close in pairs.values():
            close()
    for (impl, side), ns in best.items():
        print(f"  {row} {impl:10} {side:8} {ns:7.1f} ns per call (best of {rounds} rounds, "
              f"batches of {batch})")


# ---------------------------------------------------------------------------- two processes


def _side_stats() -> dict[str, float]:
    """This process's context switches and CPU seconds (all its threads)."""
    status = Path("/proc/self/status").read_text()
    vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
    inv = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
    t = os.times()
    return {"vcsw": vol, "ivcsw": inv, "cpu": t.user + t.system}


def run(row: str, impl: str, n: int) -> float:
    from fastipc.bench import mq as bmq
    from fastipc.bench import pipe as bpipe
    from fastipc.bench import run_c
    from fastipc.bench import shm as bshm

    fns: dict[tuple[str, str], Callable[[], float]] = {
        ("mq", "fastipc"): partial(bmq._stream, partial(bmq._one, bmq._fastipc("native")), n),
        ("mq", "posix_ipc"): partial(bmq._stream, partial(bmq._one, bmq.POSIX_IPC), n),
        ("pipe", "fastipc"): partial(bpipe._oneway, bpipe._fastipc("native"), n, 64),
        ("pipe", "handframed"): partial(bpipe._oneway, bpipe._os_pipe, n, 64),
        ("shm", "fastipc"): partial(bshm.fastipc_stream, "native", n),
        ("shm", "cring"): partial(run_c, "shm_ring", "stream", str(n)),
        ("shmpp", "fastipc"): partial(bshm.fastipc_pingpong, "native", n),
        ("shmpp", "cring"): partial(run_c, "shm_ring", "pingpong", str(n)),
        ("busy", "fastipc"): partial(bshm.fastipc_stream_busy, "native", n),
    }
    return fns[(row, impl)]()


# ---------------------------------------------------------------------------- callgrind


def _callgrind_once(cmd: list[str], out: Path) -> dict[str, int]:
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                   check=True, capture_output=True)
    ann = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", str(out)],
                         check=True, capture_output=True, text=True).stdout
    costs: dict[str, int] = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*?)(?: \[(.*)\])?$", line)
        if not m:
            continue
        ir = int(m[1].replace(",", ""))
        if m[2] == "PROGRAM TOTALS":
            costs["TOTAL"] = ir
            continue
        where, _, func = m[2].rpartition(":")
        func = func.split("'")[0]  # recursion levels of one function: one entry
        key = f"{func} ({where.rsplit('/', 1)[-1] or (m[3] or '?').rsplit('/', 1)[-1]})"
        costs[key] = costs.get(key, 0) + ir
    return costs


def callgrind(row: str, impl: str, n: int, batch: int, top: int = 40) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fastipc-prof-"))
    if impl == "cring":
        binary = str(c_ring_binary())
        cmds = [[binary, str(k), str(batch)] for k in (n, 2 * n)]
    else:
        me = [sys.executable, __file__, "inproc", row, impl]
        cmds = [[*me, str(k), str(batch)] for k in (n, 2 * n)]
    a = _callgrind_once(cmds[0], tmp / "a.out")
    b = _callgrind_once(cmds[1], tmp / "b.out")
    per = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
    total = per.pop("TOTAL", 0.0)
    print(f"{row} {impl}: {total:.0f} instructions per message (send + receive, batch {batch})")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        if v >= 1:
            print(f"  {v:8.0f}  {k}")


# ---------------------------------------------------------------------------- syscalls


SYSCALLS = {0: "read", 1: "write", 7: "poll", 19: "readv", 20: "writev", 24: "sched_yield",
            202: "futex", 232: "epoll_wait", 242: "mq_timedsend", 243: "mq_timedreceive",
            271: "ppoll", 281: "epoll_pwait", 327: "preadv2", 328: "pwritev2"}


def counts(row: str, impl: str, n: int) -> None:
    """``run`` under ``perf record`` of every system call and context switch (tracepoints:
    counted in the kernel, far lighter than strace): per process (the parent, the child),
    the calls per message by name, how many failed, and the switches away from it
    (voluntary: it slept; involuntary: preempted)."""
    data = Path(tempfile.mkdtemp(prefix="fastipc-prof-")) / "perf.data"
    cmd = [sys.executable, __file__, "run", row, impl, str(n)]
    subprocess.run(["perf", "record", "-q", "-o", str(data), "-e", "raw_syscalls:sys_enter",
                    "-e", "raw_syscalls:sys_exit", "-e", "sched:sched_switch", "--", *cmd],
                   check=True)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,event,trace"],
                            check=True, capture_output=True, text=True).stdout
    per: dict[int, dict[str, int]] = {}
    for line in script.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        pid, event = int(parts[0]), parts[1]
        c = per.setdefault(pid, {})
        if event.startswith("raw_syscalls:sys_enter"):
            name = SYSCALLS.get(int(parts[3]))
            if name:
                c[name] = c.get(name, 0) + 1
        elif event.startswith("raw_syscalls:sys_exit"):
            name = SYSCALLS.get(int(parts[3]))
            if name and int(parts[-1]) < 0:
                c[name + " failed"] = c.get(name + " failed", 0) + 1
        elif event.startswith("sched:sched_switch"):
            m = re.search(r"prev_pid=(\d+).*prev_state=(\S+)", line)
            if m:
                c2 = per.setdefault(int(m[1]), {})
                key = "switch, preempted" if m[2].startswith("R") else "switch, slept"
                c2[key] = c2.get(key, 0) + 1
    busy = sorted(per.items(), key=lambda kv: -sum(kv[1].values()))[:2]
    for pid, c in sorted(busy):
        print(f"  pid {pid}: " + ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(c.items())))


# ---------------------------------------------------------------------------- busy thread


PLACEMENTS = {
    "quiet": "no busy thread",
    "bench": "busy thread on the sender's CPU (the bench)",
    "process": "busy process (no GIL shared) on the sender's CPU",
    "free": "busy thread, both CPUs allowed",
    "keepgil": "bench placement, sender keeps the GIL (send(m, 0) retried)",
}


def _busy_loop(stop: threading.Event, out: dict[str, float]) -> None:
    """bench.shm._busy, timing itself: a gap of more than 200 µs between two rounds of 1000
    increments (about 25 µs of bytecode) is time without the GIL or the CPU."""
    n, gaps, lost = 0, 0, 0.0
    clock = time.perf_counter
    t0 = last = clock()
    c0 = time.thread_time()
    while not stop.is_set():
        for _ in range(1000):
            n += 1
        t = clock()
        if t - last > 200e-6:
            gaps += 1
            lost += t - last
        last = t
    out.update(wall=clock() - t0, cpu=time.thread_time() - c0, gaps=gaps, lost=lost)


def _spin_process(stop: Any) -> None:
    while not stop.is_set():
        for _ in range(1000):
            pass


def busy(n: int, rounds: int = 3) -> None:
    """The CPU-bound-thread row (bench.shm.fastipc_stream_busy) taken apart, for several
    placements of the busy work, alternating: the rate, the share of the wall time the
    sender's thread and the busy thread ran (CPU time), how often and how long the busy
    thread was without the GIL or its CPU, and the sender's waits (spins and sleeps: each
    releases the GIL)."""
    import multiprocessing as mp

    from fastipc import shm
    from fastipc.bench import cores
    from fastipc.bench import shm as bshm

    def measure(placement: str) -> dict[str, float]:
        name = bshm._name()
        mine, theirs = cores()

        def child(conn: Any) -> None:
            with shm.Reader(name, timeout=10, backend="native") as r:
                bshm._drain(conn, r.recv, n)

        result: dict[str, float] = {}

        def parent(conn: Any) -> float:
            stop = threading.Event()
            info: dict[str, float] = {}
            helper: Any = None
            if placement in ("bench", "free", "keepgil"):
                if placement == "free":
                    os.sched_setaffinity(0, {mine, theirs})
                helper = threading.Thread(target=_busy_loop, args=(stop, info), daemon=True)
            elif placement == "process":
                pstop = mp.get_context("fork").Event()
                helper = mp.get_context("fork").Process(target=_spin_process, args=(pstop,))
            with shm.Writer(name, backend="native") as w:
                if helper is not None:
                    helper.start()
                    time.sleep(0.05)
                send: Callable[[bytes], Any] = w.send
                if placement == "keepgil":
                    def send(m: bytes, once: Any = w.send) -> None:
                        while True:  # every attempt holds the GIL; none waits
                            try:
                                once(m, 0)
                                return
                            except TimeoutError:
                                pass
                c0, s0 = time.thread_time(), _side_stats()
                dt = bshm._flood(conn, send, n)
                c1, s1 = time.thread_time(), _side_stats()
                if placement == "process":
                    pstop.set()
                    helper.join()
                elif helper is not None:
                    stop.set()
                    helper.join()
                st = w.stats()
            result.update(rate=n / dt, wall=dt, sender_cpu=c1 - c0,
                          vcsw=s1["vcsw"] - s0["vcsw"], ivcsw=s1["ivcsw"] - s0["ivcsw"],
                          spins=st["spins"], sleeps=st["sleeps"], **{
                              "busy_" + k: v for k, v in info.items()})
            return n / dt

        bshm._two(child, parent)
        return result

    for rnd in range(rounds):
        for p, label in PLACEMENTS.items():
            r = measure(p)
            line = (f"{rnd} {label:58} {r['rate'] / 1e6:6.2f} M msg/s; sender thread ran "
                    f"{r['sender_cpu'] / r['wall']:4.0%} of {r['wall'] * 1e3:.0f} ms; waits "
                    f"{r['spins']:.0f} spun + {r['sleeps']:.0f} slept; sender process switches "
                    f"{r['vcsw']:.0f} slept + {r['ivcsw']:.0f} preempted")
            if "busy_cpu" in r:
                gap_ms = r["busy_lost"] * 1e3 / max(r["busy_gaps"], 1)
                line += (f"; busy thread ran {r['busy_cpu'] / r['busy_wall']:4.0%}, "
                         f"{r['busy_gaps']:.0f} gaps of {gap_ms:.2f} ms")
            print(line, flush=True)


def main(argv: list[str]) -> None:
    cmd = argv[0] if argv else ""
    if cmd == "inproc":
        inproc(argv[1], argv[2], int(argv[3]), int(argv[4]) if len(argv) > 4 else 1)
    elif cmd == "run":
        before = _side_stats()
        t0 = time.perf_counter()
        figure = run(argv[1], argv[2], int(argv[3]) if len(argv) > 3 else 100_000)
        wall = time.perf_counter() - t0
        after = _side_stats()
        print(f"{argv[1]} {argv[2]}: {figure:.4g}  (parent: {after['vcsw'] - before['vcsw']} "
              f"voluntary + {after['ivcsw'] - before['ivcsw']} involuntary switches, "
              f"{after['cpu'] - before['cpu']:.3f} s CPU in {wall:.3f} s)")
    elif cmd == "callgrind":
        callgrind(argv[1], argv[2], int(argv[3]) if len(argv) > 3 else 20_000,
                  int(argv[4]) if len(argv) > 4 else 1)
    elif cmd == "kernel":
        kernel(int(argv[1]) if len(argv) > 1 else 400)
    elif cmd == "sides":
        sides(argv[1], argv[2].split(","), int(argv[3]) if len(argv) > 3 else 200)
    elif cmd == "counts":
        counts(argv[1], argv[2], int(argv[3]) if len(argv) > 3 else 100_000)
    elif cmd == "busy":
        busy(int(argv[1]) if len(argv) > 1 else 400_000)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
