"""The native channel's operations that are not per-message, through cffi on ``csrc/shm.c``.

Every message goes through the end's native handle (``csrc/py/shm.c``: ``ShmWriterHandle``,
``ShmReaderHandle``), whose methods are the public class's ``send``/``recv``...: the handle
embeds the C core's ``fipc_shm`` and holds a buffer export of the mapping (which Python
owns, an ``mmap.mmap``) until no call is busy. The objects here are given that ``fipc_shm``'s
address (the handle's ``_core``) and do the rest on it: spin and statistics, the park/unpark
hooks of the awaitables, the writer's view of its reader, and the holds of ``recv_view``
(``_backend.ring.Holds``). They hold no reference to the end, which holds them: no cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from fastipc._backend import shm as contract
from fastipc._backend.ring import Holds
from fastipc._core import Deadline, ffi, lib

__all__ = ["ReaderOps", "WriterOps"]

_NO_HOLD = 2**64 - 1
_no_retry = contract._no_retry


class _Ops(contract.Retrying):
    _what = "channel end"

    def __init__(self, core: int, name: str) -> None:
        self.name = name
        self._h = ffi.cast("fipc_shm *", core)

    @property
    def spin(self) -> float:
        return float(self._h.spin.max_ns) / 1e9

    @spin.setter
    def spin(self, value: float) -> None:
        self._h.spin.max_ns = self._h.spin.ns = int(min(value, 1.0) * 1e9)

    def stats(self) -> tuple[int, int]:
        return int(self._h.spins), int(self._h.sleeps)

    def park(self) -> Optional[tuple[int, int]]:
        off = ffi.new("uint64_t *")
        val = ffi.new("uint32_t *")
        rc = lib.fipc_shm_park(self._h, off, val)
        if rc == 1:
            return None
        if rc < 0:
            self._run(rc, _no_retry, Deadline(0.0))
        return int(ffi.cast("uintptr_t", self._h.base)) + int(off[0]), int(val[0])

    def unpark(self) -> None:
        lib.fipc_shm_unpark(self._h)

    def close(self) -> None:
        """The handle has closed the channel's end and let go of the mapping already."""


class WriterOps(_Ops, contract.FlushPark):
    _what = "Writer"

    def flushed(self) -> bool:
        rc = lib.fipc_shm_flushed(self._h)
        if rc < 0:
            self._run(rc, _no_retry, Deadline(0.0))
        return bool(rc == 1)

    def reader_attached(self) -> bool:
        return bool(lib.fipc_shm_reader_attached(self._h))

    def _header_words(self) -> tuple[Any, int]:
        base = self._h.base
        return ffi.cast("uint32_t *", base), int(ffi.cast("uintptr_t", base))


class ReaderOps(_Ops, Holds):
    _what = "Reader"

    def __init__(self, core: int, name: str, mm: Any) -> None:
        super().__init__(core, name)
        self._mv = memoryview(mm)
        self._addr = int(ffi.cast("uintptr_t", self._h.base))
        self._init_holds()

    def set_hold(self, pos: Optional[int]) -> None:
        lib.fipc_shm_set_hold(self._h, _NO_HOLD if pos is None else pos)

    def _recheck(self, flag: bool) -> None:
        self._h.recheck = int(flag)

    def close(self) -> None:
        try:
            self._mv.release()
        except BufferError:  # exported still: it goes with its last user
            pass


if TYPE_CHECKING:
    _check_writer: type[contract.WriterOps] = WriterOps
    _check_reader: type[contract.ReaderOps] = ReaderOps
