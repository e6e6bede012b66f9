"""Coverage-guided fuzzing of the shm reader with atheris (optional: ``pip install atheris``).

Each input rewrites a live channel's segment: either its whole header, or a few header words,
or the ring's bytes and the published head; then a reader (native by default, ``--pure`` for
the pure backend) attaches and drains it with every read call. Anything but a clean return or
the documented exceptions (OSError, EOFError, TimeoutError, ValueError) is a finding, and
under the sanitizer build an out-of-bounds access aborts at once.

    python tests/fuzz_shm_atheris.py -atheris_runs=100000 [--pure]
"""

from __future__ import annotations

import os
import struct
import sys

import atheris

with atheris.instrument_imports():
    from fastipc import shm

HDR = 256
CAP = 4096
EXPECTED = (OSError, EOFError, TimeoutError, ValueError)
BACKEND = "pure" if "--pure" in sys.argv else "native"
NAME = f"fastipc-fuzz-{os.getpid()}"


def main() -> None:
    argv = [a for a in sys.argv if a != "--pure"]
    writer = shm.Writer(NAME, capacity=CAP)
    writer.send(b"a" * 10)
    writer.send(b"b" * 900)
    seg = shm.SharedMemory(NAME)
    pristine = bytes(seg.buf)
    runs = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-atheris_runs=")), 0)
    done = [0]

    def cleanup() -> None:
        seg.close()
        writer.close()

    def one(data: bytes) -> None:
        done[0] += 1
        if runs and done[0] >= runs:  # libFuzzer exits without unwinding Python: clean now
            cleanup()
            print(f"{done[0]} inputs, no finding", flush=True)
            os._exit(0)
        fdp = atheris.FuzzedDataProvider(data)
        seg.buf[:] = pristine
        mode = fdp.ConsumeIntInRange(0, 2)
        if mode == 0:
            seg.buf[:HDR] = fdp.ConsumeBytes(HDR).ljust(HDR, b"\0")
        elif mode == 1:
            for _ in range(fdp.ConsumeIntInRange(1, 6)):
                index = fdp.ConsumeIntInRange(0, HDR // 4 - 1)
                seg.buf[index * 4:index * 4 + 4] = struct.pack("<I", fdp.ConsumeInt(4) & 0xFFFFFFFF)
        else:
            ring = fdp.ConsumeBytes(CAP)
            seg.buf[HDR:HDR + len(ring)] = ring
            seg.buf[64:72] = struct.pack("<Q", fdp.ConsumeIntInRange(0, CAP // 8) * 8)
        try:
            reader = shm.Reader(NAME, timeout=0, backend=BACKEND)
        except EXPECTED:
            return
        try:
            for _ in range(4):
                for call in (lambda: reader.recv(timeout=0),
                             lambda: reader.recv_into(bytearray(CAP * 4), timeout=0),
                             lambda: reader.recv_many(8, timeout=0)):
                    try:
                        call()
                    except EXPECTED:
                        pass
                try:
                    with reader.recv_view(timeout=0) as view:
                        bytes(view)
                except EXPECTED:
                    pass
        finally:
            reader.close()

    try:
        atheris.Setup(argv, one)
        atheris.Fuzz()
    finally:  # reached only when setting up fails; an interrupted run leaves the segment:
        cleanup()  # `fastipc rm --stale` removes it


if __name__ == "__main__":
    main()
