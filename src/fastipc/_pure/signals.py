"""Signal operations in Python: ``os.kill``, and libc's ``sigqueue``/``sigtimedwait`` through
ctypes (the ``signal`` module's ``sigtimedwait`` does not expose the value a signal carries)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from typing import Optional

__all__ = ["send", "wait"]

SI_QUEUE = -1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.sigtimedwait.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_libc.sigwaitinfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libc.sigemptyset.argtypes = [ctypes.c_void_p]

# siginfo_t on Linux: si_signo, si_errno, si_code (3 ints), then a union aligned to a pointer;
# for SI_QUEUE and kill() its fields are si_pid, si_uid, si_value.
_UNION = 16 if ctypes.sizeof(ctypes.c_void_p) == 8 else 12


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def send(pid: int, signum: int, value: Optional[int]) -> None:
    if value is None:
        os.kill(pid, signum)
        return
    # union sigval is passed by value in a register; on little-endian Linux (x86-64,
    # aarch64) sival_int is its low 32 bits.
    if _libc.sigqueue(pid, signum, value & 0xFFFFFFFF) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def wait(signums: list[int], timeout: float) -> tuple[int, int, int, Optional[int]] | int:
    sigset = ctypes.create_string_buffer(128)
    _libc.sigemptyset(sigset)
    for s in signums:
        if _libc.sigaddset(sigset, s) < 0:
            return -ctypes.get_errno()
    info = ctypes.create_string_buffer(128)
    if timeout < 0:
        rc = _libc.sigwaitinfo(sigset, info)
    else:
        ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
        rc = _libc.sigtimedwait(sigset, info, ctypes.byref(ts))
    if rc < 0:
        err = ctypes.get_errno()
        return -(errno.ETIMEDOUT if err == errno.EAGAIN else err)
    signo, _errno, code = (
        int.from_bytes(info.raw[i : i + 4], sys.byteorder, signed=True) for i in (0, 4, 8)
    )
    pid = int.from_bytes(info.raw[_UNION : _UNION + 4], sys.byteorder, signed=True)
    uid = int.from_bytes(info.raw[_UNION + 4 : _UNION + 8], sys.byteorder, signed=False)
    value = int.from_bytes(info.raw[_UNION + 8 : _UNION + 12], sys.byteorder, signed=True)
    return signo, pid, uid, (value if code == SI_QUEUE else None)
