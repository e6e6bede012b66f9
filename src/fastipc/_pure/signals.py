"""Signal operations in Python: ``os.kill``, and libc's ``sigqueue``/``sigtimedwait`` through
ctypes (the ``signal`` module's ``sigtimedwait`` does not expose the value a signal carries)."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from typing import Optional

from fastipc._backend.signals import Received
from fastipc._core import Deadline, retry

__all__ = ["notifier", "send", "wait"]

SI_QUEUE = -1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.sigtimedwait.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_libc.sigwaitinfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libc.sigemptyset.argtypes = [ctypes.c_void_p]
_libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_SFD_NONBLOCK, _SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC  # their values on Linux

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
        _fail()


def _int(raw: bytes, at: int, signed: bool = True) -> int:
    return int.from_bytes(raw[at : at + 4], sys.byteorder, signed=signed)


def _fail() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def _sigset(signums: list[int]) -> ctypes.Array[ctypes.c_char]:
    sigset = ctypes.create_string_buffer(128)
    _libc.sigemptyset(sigset)
    for s in signums:
        if _libc.sigaddset(sigset, s) < 0:
            _fail()
    return sigset


def notifier(signums: list[int]) -> int:
    fd = int(_libc.signalfd(-1, _sigset(signums), _SFD_NONBLOCK | _SFD_CLOEXEC))
    if fd < 0:
        _fail()
    return fd


def wait(signums: list[int], timeout: float) -> Received:
    sigset = _sigset(signums)
    info = ctypes.create_string_buffer(128)  # owned by this call
    deadline = Deadline(timeout)

    def attempt(left: float) -> int:
        if left < 0:
            rc = _libc.sigwaitinfo(sigset, info)
        else:
            frac, whole = math.modf(left)
            rc = _libc.sigtimedwait(
                sigset, info, ctypes.byref(_Timespec(int(whole), int(frac * 1e9)))
            )
        return -ctypes.get_errno() if rc < 0 else int(rc)

    retry(attempt(timeout), attempt, deadline)
    raw = info.raw
    code = _int(raw, 8)
    value = _int(raw, _UNION + 8)
    return (
        _int(raw, 0),
        _int(raw, _UNION),
        _int(raw, _UNION + 4, False),
        (value if code == SI_QUEUE else None),
    )
