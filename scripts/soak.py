"""Soak: every mechanism at once, producers killed and restarted at random.

    python scripts/soak.py [--seconds 60] [--backend native|pure] [--seed N]

For each mechanism (a FIFO, a POSIX message queue, the shared-memory channel and a Unix-socket
server) a consumer process receives while a producer process sends numbered messages whose
content is derived from their number; after each ``send`` returns, the producer logs the
number (the message is acknowledged). At random moments the soak kills a producer with
SIGKILL and starts the next one. At the end it checks, for every producer: the consumer got
its messages once each, in order, with the right content, and got every acknowledged one
(at most one more: sent but killed before it could be logged); and that no fd, /dev/shm
entry, message queue, FIFO or socket file is left. Exit status 0 when all holds.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MECHANISMS = ["pipe", "mq", "shm", "unix"]


def payload(k: int, seq: int) -> bytes:
    head = k.to_bytes(4, "big") + seq.to_bytes(8, "big")
    return head + bytes([seq % 251]) * (seq * 7919 % 3000)


def parse(msg: bytes) -> tuple[int, int]:
    k, seq = int.from_bytes(msg[:4], "big"), int.from_bytes(msg[4:12], "big")
    if msg != payload(k, seq):
        raise AssertionError(f"corrupted message {k}/{seq}")
    return k, seq


# ------------------------------------------------------------------ the two roles


def producer(mech: str, where: str, k: int, log: str, backend: str) -> None:
    from fastipc import mq, pipe, server, shm

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if mech == "pipe":
        end = pipe.FIFO(where, create=False, backend=backend).open_writer(timeout=30)
        send = end.send
    elif mech == "mq":
        end = mq.MessageQueue(where, backend=backend)
        send = end.send
    elif mech == "shm":
        deadline = time.monotonic() + 30
        while True:  # the consumer removes a killed writer's segment once it has drained it
            try:
                end = shm.Writer(where, capacity=1 << 16, backend=backend)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        send = end.send
    else:
        end = server.connect(where, framing="length", backend=backend)
        send = end.send
    seq = 0
    while True:
        send(payload(k, seq))
        os.write(fd, b"%d\n" % seq)  # acknowledged
        seq += 1


def consumer(mech: str, where: str, log: str, backend: str) -> None:
    from fastipc import mq, pipe, server, shm

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

    def record(msg: bytes) -> None:
        k, seq = parse(msg)
        os.write(fd, b"%d %d\n" % (k, seq))

    if mech == "pipe":
        fifo = pipe.FIFO(where, create=False, backend=backend)
        while not stop:
            try:
                r = fifo.open_reader(timeout=0.5)
            except TimeoutError:
                continue
            with r:
                for msg in r:  # to the end of this producer's stream
                    record(msg)
    elif mech == "mq":
        q = mq.MessageQueue(where, backend=backend)
        while not stop:
            try:
                record(q.receive(timeout=0.2)[0])
            except TimeoutError:
                pass
        q.close()
    elif mech == "shm":
        while not stop:
            try:
                r = shm.Reader(where, timeout=0.5, backend=backend)
            except (TimeoutError, FileNotFoundError):
                continue
            with r:
                while True:
                    try:
                        record(r.recv(timeout=0.5))
                    except TimeoutError:
                        if stop:
                            break
                    except EOFError:
                        break
    else:

        class Log(server.Handler):
            def on_message(self, conn: server.Connection, data: bytes) -> None:
                record(data)

        with server.Server(Log(), unix=where, framing="length", backend=backend) as srv:
            os.write(fd, b"")
            while not stop:
                srv.serve(0.2)


# ------------------------------------------------------------------ the orchestra


def spawn(*args: str, script: str = __file__) -> subprocess.Popen[bytes]:
    """Run ``script`` (this one by default) in a child process with ``args``."""
    return subprocess.Popen([sys.executable, script, *args])


def open_fds() -> set[str]:
    """The fds this process has open (compared before and after: a leak check)."""
    return set(os.listdir("/proc/self/fd"))


def arguments(doc: str, backends: list[str], **options: Any) -> argparse.Namespace:
    """The command line every soak takes: --seconds, --backend, --seed, one option for each
    of ``options`` (its default, whose type it has), and the child's role and arguments
    (the soak runs itself in its child processes)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backend", default="native", choices=backends)
    parser.add_argument("--seed", type=int, default=None)
    for option, default in options.items():
        parser.add_argument(f"--{option}", type=type(default), default=default)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args()


def verdict(problems: list[str], passed: str, logs: Path) -> int:
    """Remove the logs, print the problems found and the verdict; the exit status."""
    for f in logs.iterdir():
        f.unlink()
    logs.rmdir()
    for p in problems:
        print("  PROBLEM:", p)
    print("soak: " + ("FAILED" if problems else "passed: " + passed))
    return 1 if problems else 0


def check(mech: str, logs: Path, incarnations: int) -> list[str]:
    problems = []
    got: dict[int, list[int]] = {}
    for line in (logs / f"{mech}.consumer").read_text().split("\n"):
        if line:
            k, seq = map(int, line.split())
            got.setdefault(k, []).append(seq)
    total = 0
    for k in range(incarnations):
        acked_file = logs / f"{mech}.{k}"
        acked = len(acked_file.read_text().split()) if acked_file.exists() else 0
        seqs = got.get(k, [])
        total += len(seqs)
        if seqs != list(range(len(seqs))):
            problems.append(f"{mech} producer {k}: out of order or duplicated")
        if not acked <= len(seqs) <= acked + 1:
            problems.append(f"{mech} producer {k}: {acked} acknowledged, {len(seqs)} received")
    print(f"  {mech:5} {incarnations:3} producers, {total:9,} messages received and checked")
    if not total:
        problems.append(f"{mech}: no message came through: nothing was checked")
    return problems


def main() -> int:
    a = arguments(__doc__, ["native", "pure"])
    if a.role == "producer":
        mech, where, k, log = a.args
        producer(mech, where, int(k), log, a.backend)
        return 0
    if a.role == "consumer":
        mech, where, log = a.args
        consumer(mech, where, log, a.backend)
        return 0

    from fastipc import mq

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    fds_before = open_fds()
    tag = f"fastipc-soak-{os.getpid()}"
    logs = Path(tempfile.mkdtemp(prefix="fastipc-soak-"))
    where = {
        "pipe": str(logs / "fifo"),
        "mq": tag,
        "shm": tag,
        "unix": str(logs / "sock"),
    }
    os.mkfifo(where["pipe"], 0o600)
    queue = mq.MessageQueue(tag, create=True, max_messages=10, max_message_size=4096)
    print(f"soak: {a.seconds:g} s, backend {a.backend}, seed {seed}, logs in {logs}")
    consumers = {m: spawn("--backend", a.backend, "--role", "consumer", m, where[m],
                          str(logs / f"{m}.consumer")) for m in MECHANISMS}
    time.sleep(1.0)  # let the consumers (the Unix server) start
    count = dict.fromkeys(MECHANISMS, 0)

    def start(m: str) -> subprocess.Popen[bytes]:
        p = spawn("--backend", a.backend, "--role", "producer", m, where[m], str(count[m]),
                  str(logs / f"{m}.{count[m]}"))
        count[m] += 1
        return p

    producers = {m: start(m) for m in MECHANISMS}
    kills = 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0.05, 0.5))
        m = rnd.choice(MECHANISMS)
        producers[m].kill()
        producers[m].wait()
        kills += 1
        producers[m] = start(m)
    for p in producers.values():
        p.kill()
        p.wait()
    time.sleep(2.0)  # the consumers drain what the last producers sent
    for p in consumers.values():
        p.terminate()
    for p in consumers.values():
        p.wait(30)
    print(f"  {kills} producers killed with SIGKILL")

    problems = []
    for m in MECHANISMS:
        problems += check(m, logs, count[m])
    queue.unlink()
    queue.close()
    os.unlink(where["pipe"])
    leftovers = [p for p in ("/dev/shm/" + tag, "/dev/mqueue/" + tag, where["unix"]) if os.path.exists(p)]
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    fds_after = open_fds()
    if fds_after - fds_before:
        problems.append(f"fds left open: {sorted(fds_after - fds_before)}")
    return verdict(problems, "nothing lost, duplicated, reordered or leaked", logs)


if __name__ == "__main__":
    sys.exit(main())
