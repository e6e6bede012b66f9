"""The module-level pipe operations backed by ``csrc/pipe.c`` (the contract is
:class:`fastipc._backend.pipe.Module`). The streams themselves are the public objects' native
handles (``csrc/py/pipe.c``): their per-message methods are C methods of the object."""

from __future__ import annotations

from typing import Any

from fastipc._core import byte_view, check, ffi, lib

__all__ = ["as_buffer", "get_size", "open_pipe", "set_size", "writer_present"]


def open_pipe(size: int) -> tuple[int, int]:
    fds = ffi.new("int[2]")
    check(lib.fipc_pipe_open(fds, size))
    return fds[0], fds[1]


def set_size(fd: int, size: int) -> int:
    return check(lib.fipc_pipe_set_size(fd, size))


def get_size(fd: int) -> int:
    return check(lib.fipc_pipe_get_size(fd))


def writer_present(fd: int) -> bool:
    return bool(check(lib.fipc_fifo_writer_present(fd)))


def as_buffer(data: Any) -> tuple[Any, int]:
    """bytes pass to C as they are; other bytes-like objects without a copy."""
    if type(data) is bytes:
        return data, len(data)
    view = byte_view(data)  # fastipc's TypeErrors for str, non-buffers and scattered views
    buf = ffi.from_buffer(view)
    return buf, len(buf)
