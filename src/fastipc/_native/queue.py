"""Queue operations backed by ``csrc/queue.c``: one C call per user operation.

The mapping belongs to Python (an ``mmap.mmap``); C gets its address through
``ffi.from_buffer``, which holds a buffer export, so the mapping cannot be closed under C's
feet; :meth:`Ops.free` releases it once no call runs (the public class sees to that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastipc._backend.queue import MARK, STAGE, FormatFn, QueueOps
from fastipc._core import check, ffi, lib

__all__ = ["Ops", "format"]

_get = lib.fipc_queue_get
_from_buffer = ffi.from_buffer


def format(mm: Any, size: int, max_message: int, maxsize: int, pid: int) -> int:
    base = _from_buffer(mm)
    try:
        return int(lib.fipc_queue_format(base, size, max_message, maxsize, pid))
    finally:
        ffi.release(base)


class Ops:
    __slots__ = ("_addr", "_base", "_q")

    def __init__(self, mm: Any, size: int, spin: float, spill: str, mode: int) -> None:
        self._base = _from_buffer(mm)
        self._q = ffi.new("fipc_queue *")
        self._addr = int(ffi.cast("uintptr_t", self._base))
        try:
            rc = lib.fipc_queue_attach(self._q, self._base, size, spin)
            if rc == 0:
                rc = lib.fipc_queue_set_spill(self._q, spill.encode(), mode)
            check(rc)
        except BaseException:
            ffi.release(self._base)
            raise

    def put(self, data: Any, kind: int, timeout: float) -> int:
        if type(data) is not bytes:
            data = _from_buffer(data)
        return int(lib.fipc_queue_put1(self._q, data, len(data), kind, timeout))

    def put_ref(self, data: bytes, kind: int, timeout: float, committed: bytearray) -> int:
        return int(lib.fipc_queue_put_ref(self._q, data, len(data), kind, timeout,
                                          _from_buffer(committed)))

    def get_staged(self, stage: Any, cap: int, timeout: float, want: int) -> int:
        return int(_get(self._q, stage, cap, timeout, want))

    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self._q))

    def new_stage(self) -> tuple[Any, Any, Any]:
        stage = ffi.new("char[]", STAGE + MARK)
        buf = ffi.buffer(stage)
        return stage, buf, memoryview(buf)[STAGE:].cast("Q")  # a store costs less than cffi's

    def putv(self, parts: Sequence[Any], kind: int, timeout: float) -> int:
        bufs = [_from_buffer(p) for p in parts]  # kept alive until the call returns
        ptrs = ffi.new("char *[]", bufs)
        lens = ffi.new("uint64_t[]", [len(b) for b in bufs])
        return int(lib.fipc_queue_put(self._q, ptrs, lens, len(bufs), kind, timeout))

    def put_many(self, blob: bytes, lens: Sequence[int], kind: int,
                 timeout: float) -> tuple[int, int]:
        clens = ffi.new("uint64_t[]", lens)
        sent = ffi.new("uint64_t *")  # per call: threads may share this handle
        rc = lib.fipc_queue_put_many(self._q, blob, clens, len(lens), kind, timeout, sent)
        return int(rc), int(sent[0])

    def get(self, dest: Any, timeout: float) -> int:
        buf = _from_buffer(dest, require_writable=True)
        return int(_get(self._q, buf, len(buf) - MARK, timeout, 0))

    def new_batch(self, max_messages: int) -> Any:
        # per call: threads may share this handle
        return ffi.new("uint64_t[]", max_messages), ffi.new("uint32_t[]", max_messages)

    def batch(self, batch: Any, n: int) -> tuple[list[int], list[int]]:
        return ffi.unpack(batch[0], n), ffi.unpack(batch[1], n)

    def get_many(self, dest: Any, batch: Any, max_messages: int, timeout: float) -> int:
        buf = _from_buffer(dest, require_writable=True)
        return int(lib.fipc_queue_get_many(self._q, buf, len(buf) - MARK, batch[0], batch[1],
                                           max_messages, timeout))

    def last(self) -> tuple[int, int]:
        return int(self._q.last_len), int(self._q.last_kind)

    def count(self) -> int:
        return check(int(lib.fipc_queue_count(self._q)))

    def used(self) -> int:
        return check(int(lib.fipc_queue_used(self._q)))

    def park(self, room: int) -> tuple[int, int, int]:
        off = ffi.new("uint64_t *")
        seq = ffi.new("uint32_t *")
        rc = int(lib.fipc_queue_park(self._q, room, off, seq))
        return rc, self._addr + int(off[0]), int(seq[0])

    def wake(self) -> None:
        lib.fipc_queue_close(self._q)

    def free(self) -> bool:
        # the native handle calls this once no call of it is busy (csrc/py/handle.c)
        lib.fipc_queue_close(self._q)
        lib.fipc_queue_release(self._q)
        ffi.release(self._base)
        return True


_ops: type[QueueOps] = Ops
_format: FormatFn = format
