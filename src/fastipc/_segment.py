"""The shared-memory segment under every shm-based mechanism (the channel, the fan-out
publisher, the queue): names, creation under a temporary name with every page backed and
the creator's liveness lock held, linked into place once whole (:func:`publish_segment`),
attaching with the owner check, mapping, the liveness locks, and the base of every end,
:class:`SegmentEnd`. Written once, used by fastipc.shm, fastipc.pubsub and fastipc.queue."""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Optional, TypeVar

from fastipc import _aio, _core
from fastipc._shm_layout import LOCK_WRITER, TEMP_SUFFIX
from fastipc._shm_layout import hold_lock as hold_lock  # (the liveness locks: OFD byte locks)
from fastipc._shm_layout import lock_held as lock_held

_T = TypeVar("_T")

SHM_DIR = "/dev/shm"
SHM_PATH_MAX = len(SHM_DIR) + 1 + 200  # room for a temporary's suffix within NAME_MAX
LOCK_CREATOR = LOCK_WRITER  # byte 0: the creator's liveness lock, held from the first moment
MAX_SPIN = 1.0
DEFAULT_SPIN = 50e-6


def default_spin() -> float:
    """Spin before sleeping only where the peer can run meanwhile: on a machine with more
    than one CPU (this process's own affinity does not matter: the peer may be pinned to
    another CPU)."""
    return DEFAULT_SPIN if (os.cpu_count() or 1) > 1 else 0.0


def segment_path(name: Any) -> tuple[str, str]:
    """(name without the slash, path under /dev/shm) for a user-supplied name."""
    bare = _core.shm_name(name)[1:]
    return bare, f"{SHM_DIR}/{bare}"


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


def check_spin(spin: Optional[float]) -> float:
    if spin is None:
        return default_spin()
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise TypeError(f"spin must be a number of seconds or None, not {type(spin).__name__}")
    if not 0 <= spin <= MAX_SPIN:
        raise ValueError(f"spin must be between 0 and {MAX_SPIN} seconds, not {spin!r}")
    return float(spin)


def open_segment(path: str, flags: int, mode: int = 0o600) -> int:
    return os.open(path, flags | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, mode)


def map_segment(fd: int, size: int) -> mmap.mmap:
    """Map ``fd``'s file through an open file description of its own: the mapping then holds
    no reference to ``fd``'s, whose liveness lock therefore goes with ``fd`` alone (a forked
    child that closes its copy of ``fd`` leaves its parent's lock to the parent)."""
    own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        return mmap.mmap(own, size)
    finally:
        os.close(own)


def create_segment(path: str, size: int, mode: int) -> int:
    """Create the segment exclusively and back every page of it now, so that a full /dev/shm
    is an OSError here rather than a SIGBUS at the first write."""
    fd = open_segment(path, os.O_CREAT | os.O_EXCL, mode)
    try:
        _back(fd, size, path)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _back(fd: int, size: int, path: str) -> None:
    """Size the file open at ``fd`` and back every page of it (see :func:`create_segment`)."""
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise OSError(
                exc.errno,
                f"cannot back {size} bytes of shared memory: {SHM_DIR} is too small "
                f"(see `df {SHM_DIR}`; remount it with a larger size=, or run docker "
                "with --shm-size)",
                path,
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _create_locked(temp: str, size: int, mode: int, lock: int) -> int:
    """Create the temporary ``temp``, backed and with its creator's locks (byte 0, which
    ``fastipc rm --stale`` probes, and ``lock``) taken before its name appears: an
    unnamed file (O_TMPFILE) locked, then linked. Where the file system has no O_TMPFILE,
    an exclusive create, locked at once."""
    try:
        fd = os.open(SHM_DIR, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            raise
        fd = create_segment(temp, size, mode)
        named = True
    else:
        named = False
    try:
        if not named:
            _back(fd, size, temp)
        for byte in {LOCK_CREATOR, lock}:
            if not hold_lock(fd, byte):  # a file of our own: no one else can hold it
                raise OSError(errno.EAGAIN, "cannot take the creator's lock", temp)
        if not named:
            _link_unnamed(fd, temp)
    except BaseException:
        os.close(fd)
        if named:
            _unlink_quietly(temp)
        raise
    return fd


def _link_unnamed(fd: int, path: str) -> None:
    """Give the unnamed file open at ``fd`` the name ``path`` (linkat through /proc with
    AT_SYMLINK_FOLLOW, which os.link uses only when given a directory fd)."""
    directory, base = os.path.split(path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", base, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def publish_segment(path: str, size: int, mode: int, build: Callable[[int, mmap.mmap], _T],
                    undo: Callable[[_T], None], lock: int = LOCK_CREATOR
                    ) -> tuple[int, mmap.mmap, _T]:
    """Create a segment of ``size`` bytes under a temporary name, holding its creator's
    liveness lock (byte ``lock``, and byte 0 for ``fastipc rm --stale``) from the moment
    the name appears; map it (:func:`map_segment`); let ``build(fd, mapping)`` write its
    header; then link it under ``path``: the segment appears under its name only once it is
    whole, and one whose creator died half-way is a temporary with a free lock, which
    ``rm --stale`` removes. ``undo(built)`` lets go of what ``build`` made when the segment
    cannot be published. FileExistsError if ``path`` is taken. The one way every segment
    end (the channel's Writer, the Publisher, the Queue) creates its segment."""
    temp = f"{path[:SHM_PATH_MAX]}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    fd = _create_locked(temp, size, mode, lock)
    mm: Optional[mmap.mmap] = None
    built: Any = None
    made = False
    try:
        mm = map_segment(fd, size)
        built = build(fd, mm)
        made = True
        try:
            os.link(temp, path)
        except FileNotFoundError:  # removed by hand: its lock kept `rm --stale` away
            raise OSError(errno.EAGAIN, "the temporary segment was removed while it was "
                          "being built", temp) from None
    except BaseException:
        if made:
            undo(built)
        if mm is not None:
            mm.close()
        os.close(fd)
        _unlink_quietly(temp)
        raise
    _unlink_quietly(temp)
    return fd, mm, built


def listed_messages(messages: Iterable[Any]) -> list[Any] | tuple[Any, ...]:
    """send_many's messages as a list or tuple (TypeError for one message)."""
    if isinstance(messages, (bytes, bytearray, memoryview, str)):
        raise TypeError("send_many takes an iterable of messages, not one message")
    return messages if isinstance(messages, (list, tuple)) else list(messages)


def joined_messages(messages: Iterable[Any]) -> tuple[bytes, list[int]]:
    """send_many's messages back to back, and their lengths in bytes."""
    messages = listed_messages(messages)
    if not messages:
        return b"", []
    try:  # the usual case, bytes-like items, in two C loops
        blob = b"".join(messages)
        lens = list(map(len, messages))
    except TypeError:
        blob = b""
        lens = [-1]
    if sum(lens) != len(blob):  # str items (refused), or items wider than a byte
        views = [_core.byte_view(m) for m in messages]
        blob, lens = b"".join(views), [v.nbytes for v in views]
    return blob, lens


def owner_uid(owner: Optional[int]) -> int:
    """The uid an attaching end trusts: ``owner=None`` means this process's effective uid
    (the rule of every ``owner=`` argument: Reader, Subscriber, Queue, SharedMemory)."""
    if owner is None:
        return os.geteuid()
    return _core.check_int(owner, "owner", 0, 2**32 - 1)


def check_owner(st: os.stat_result, uid: int, path: str) -> None:
    """PermissionError unless the segment ``st`` belongs to ``uid`` (see :func:`owner_uid`)."""
    if st.st_uid != uid:
        raise PermissionError(
            errno.EPERM, f"the segment belongs to uid {st.st_uid}, not {uid} (pass "
            "owner=uid to trust it)", path)


def open_to_inspect(path: str) -> Optional[int]:
    """A read-only fd of the file at ``path`` for ``fastipc ls``-style inspection (never
    blocks on a FIFO, never follows a link), or None if it cannot be opened."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None


def same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_existing(path: str) -> Optional[tuple[int, os.stat_result]]:
    """Open the segment at ``path`` for an end that attaches: ``(fd, its fstat)``, or None
    while there is none; ValueError if the name is not a regular file (nothing left open)."""
    try:
        fd = open_segment(path, 0)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path!r} is not a shared memory segment")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def wait_for(attach: Callable[[], Optional[_T]], deadline: _core.Deadline, name: str,
             first: float = 0.0005, most: float = 0.02) -> _T:
    """Call ``attach()`` until it returns something other than None (the segment is there
    and ready), polling with a backoff from ``first`` to ``most`` seconds; TimeoutError once
    ``deadline`` has expired."""
    delay = first
    while (got := attach()) is None:
        left = deadline.left_or_raise(name)
        time.sleep(delay if left < 0 else min(delay, left))
        delay = min(delay * 2, most)
    return got


def remove_orphan(fd: int, path: str, orphaned: Callable[[int], bool]) -> None:
    """Remove ``path`` if ``orphaned(fd)`` says the segment open at ``fd`` is an orphan
    (by default: its creator is gone without removing its name) and the name still refers
    to this segment. Undecidable (an OSError) counts as not orphaned."""
    try:
        dead = fd >= 0 and orphaned(fd)
    except OSError:
        return
    if dead and same_file(fd, path):
        _unlink_quietly(path)


class SegmentEnd(_core.Handle):
    """The base of every end of a shared-memory segment (shm's Writer and Reader, pubsub's
    Publisher and Subscriber, the Queue and the JoinableQueue), as
    ``selectors._BaseSelectorImpl`` is of the selectors: what they share is written here
    once, and a subclass keeps only its layout and its ops.

    A subclass's ``__init__``:

    - :meth:`_set_name` first: the name as given (``obj.name``) and ``_path`` under /dev/shm;
    - creates the segment with :meth:`_publish` (under a temporary name, holding the
      creator's liveness lock ``_creator_lock`` from the start, linked into place once
      whole), or attaches with :meth:`_open_attached` (the owner check: ``owner=`` through
      :func:`owner_uid`, the same rule everywhere), through :func:`wait_for` where it waits
      for the segment to appear;
    - maps it with :func:`map_segment` (ONE mapping function: the mapping has an open file
      description of its own, so the liveness lock is the end's fd's alone), takes its
      liveness lock on that fd, then :meth:`_core.Handle._open_handle` and :meth:`_track`.

    What a subclass provides: ``_ops`` (the pure backend's object, whose ``wake()`` ends
    the waits of calls blocked in other threads; None where a native handle does it in C),
    ``_free`` (once no call is busy), ``_creator_lock`` (the byte of the creator's liveness
    lock), ``_let_go()`` (the native handle drops its mapping without a word to the peer,
    for :meth:`_forked`), and optionally ``_park``/``_unpark`` (the native handle's C
    methods), ``_ended``, and ``_orphaned`` (the orphan policy of :meth:`_remove_orphan`).

    What it gets: ``name``; :meth:`_forked`, which a child made by fork() calls on every
    tracked end (ONE fork hook: by default the child never keeps the parent's liveness
    lock nor touches its stream; the Queue, which a child keeps using, overrides it);
    :meth:`_remove_orphan` (the name of a creator that died); and :meth:`_awaited`, the
    wait of every awaitable: ``attempt`` is a try-once call (:func:`try_once` makes one of
    a blocking call with a zero timeout), counted busy so that close() from any thread ends
    it with ValueError and nothing is unmapped under it."""

    _name = ""
    _path = ""
    _ops: Any = None
    _creator_lock = LOCK_CREATOR  # the byte of the creator's liveness lock

    @property
    def name(self) -> str:
        """The name as given, with or without the leading slash (also once closed)."""
        return self._name

    def _set_name(self, name: Any) -> None:
        """Validate ``name`` (TypeError, ValueError) and keep it as given, with the path of
        its segment under /dev/shm."""
        self._path = segment_path(name)[1]
        self._name = name

    def _publish(self, size: int, mode: int, build: Callable[[int, mmap.mmap], _T],
                 undo: Callable[[_T], None]) -> tuple[int, mmap.mmap, _T]:
        """Create this end's segment: :func:`publish_segment` at ``_path``, holding the
        creator's liveness lock on the returned fd."""
        return publish_segment(self._path, size, mode, build, undo, self._creator_lock)

    def _open_attached(self, uid: int) -> Optional[tuple[int, os.stat_result]]:
        """Open the segment to attach to it: ``(fd, its fstat)``, or None while there is
        none; PermissionError unless it belongs to ``uid`` (:func:`owner_uid`), ValueError
        if the name is not a regular file (nothing left open)."""
        got = open_existing(self._path)
        if got is not None:
            try:
                check_owner(got[1], uid, self._path)
            except BaseException:
                os.close(got[0])
                raise
        return got

    def _attach_or_raise(self, uid: int) -> tuple[int, os.stat_result]:
        """:meth:`_open_attached` for an end that does not wait: FileNotFoundError if the
        segment is absent."""
        got = self._open_attached(uid)
        if got is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._path)
        return got

    def _wake(self) -> None:
        self._ops.wake()

    _spin_async: Optional[_aio.Spin] = None  # the awaitables' spin (None: they park at once)

    def _creator_alive(self, fd: int) -> bool:
        """Whether the end that created the segment open at ``fd`` (the Writer, the
        Publisher, the Queue's creator) still holds its liveness lock."""
        return lock_held(fd, self._creator_lock)

    def _orphaned(self, fd: int) -> bool:
        """The orphan policy: whether this end may remove the name of the segment open at
        ``fd``. By default, once its creator is gone without removing it (it died)."""
        return not self._creator_alive(fd)

    def _remove_orphan(self) -> None:
        """Remove the name of an orphaned segment (:meth:`_orphaned`), if the name still
        refers to this end's segment."""
        remove_orphan(self._fd, self._path, self._orphaned)

    def _track(self) -> None:
        """The end holds a liveness lock and a mapping now: a child made by fork() calls
        :meth:`_forked`."""
        _open_ends.add(self)

    def _untrack(self) -> None:
        _open_ends.discard(self)

    def _let_go(self) -> None:
        """(native backend) The handle lets go of the mapping without a word to the peer."""
        raise NotImplementedError

    def _forked(self) -> None:
        """In a child made by fork(): this copy is not the end. Drop it without a word to
        the peer, and close the inherited fd, so that the liveness lock goes with the
        parent, not with the child, and the child never touches the parent's stream. An
        end the parent had closed is left alone: its fd number may be another's by now."""
        if self._closed:
            return
        if self._native:
            self._let_go()
        else:
            self._closed = True
            self._unfreed = []
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _renew_fd(self) -> None:
        """(In a fork child that keeps the end.) This process's fd gets an open file
        description of its own, the same file under the same number: the locks held on
        the parent's stay the parent's alone."""
        own = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.dup2(own, self._fd, inheritable=False)
        finally:
            os.close(own)

    def _park(self) -> Optional[tuple[int, int]]:
        """The await hook: ``park`` of :func:`fastipc._aio.wait` (a native handle's is C)."""
        return self._ops.park()  # type: ignore[no-any-return]

    def _unpark(self) -> None:
        self._ops.unpark()

    def _ended(self) -> None:
        """An awaited call found the end of the stream (EOFError follows)."""

    async def _awaited(self, attempt: Callable[[], Any],
                       timeout: Optional[float] | _core.Deadline,
                       give_up: Optional[Callable[[], None]] = None,
                       park: Optional[Callable[[], Optional[tuple[int, int]]]] = None) -> Any:
        """Await ``attempt()`` (a try-once call returning :data:`fastipc._aio.NOT_READY`
        when it would wait) on the running loop, parked on the end's futex word (``park``:
        another park hook than :meth:`_park`). Counted busy, so close() from another thread
        or the loop ends it (ValueError) and unmaps only after it has left; ``give_up``
        runs when it ends early on an open end (a send's half-streamed message).
        ``timeout`` may be the Deadline of a call that awaits more than once."""
        deadline = (timeout if isinstance(timeout, _core.Deadline)
                    else _core.Deadline.of(timeout))
        self._enter()
        try:
            return await _aio.wait(attempt, park or self._park, self._unpark, deadline,
                                   spin=self._spin_async, name=self._name)
        except BaseException as exc:
            if give_up is not None and not self._closed:
                give_up()
            if self._closed and isinstance(exc, (OSError, EOFError)):
                raise self._closed_error() from None
            if isinstance(exc, EOFError):
                self._ended()
            raise
        finally:
            self._leave()


# The ends open in this process, shm's, pubsub's and the queues' alike: a child made by fork()
# calls their _forked() at once.
_open_ends: weakref.WeakSet[SegmentEnd] = _core.given_up_in_child("_forked")


def try_once(call: Callable[..., _T], *args: Any) -> Callable[[], Any]:
    """The ``attempt`` of an awaitable made of a blocking call: ``call(*args, 0.0)`` (a
    zero timeout: it never waits, and takes nothing when it times out), or
    :data:`fastipc._aio.NOT_READY` when that times out."""

    def attempt() -> Any:
        try:
            return call(*args, 0.0)
        except TimeoutError:
            return _aio.NOT_READY

    return attempt


def check_writable(buffer: Any) -> None:
    """Raise what is wrong with ``buffer`` for recv_into: TypeError unless it is a writable
    contiguous bytes-like object."""
    try:
        mv = memoryview(buffer)
    except TypeError:
        raise TypeError("recv_into needs a writable bytes-like object, not "
                        f"{type(buffer).__name__!r}") from None
    with mv:
        if mv.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if not mv.c_contiguous:
            raise TypeError("recv_into needs a contiguous buffer")


class ReceivingEnd(SegmentEnd):
    """The awaitables every receiving end of a ring shares (shm's Reader, pubsub's
    Subscriber), made of its blocking calls with a zero timeout: they follow the blocking
    call's rules, and a cancelled or timed-out one has taken nothing."""

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        raise NotImplementedError

    def recv_view(self, timeout: Optional[float] = None) -> View:
        raise NotImplementedError

    async def recv_into_async(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """:meth:`recv_into` on the running event loop (asyncio, uvloop): waits without
        blocking the loop. Cancelled (or timed out), it has taken nothing: the message
        stays for the next call. ValueError if it does not fit (it stays queued)."""
        self._check_open()
        _core.check_timeout(timeout)
        check_writable(buffer)
        return await self._awaited(  # type: ignore[no-any-return]
            try_once(self.recv_into, buffer), timeout)

    async def recv_view_async(self, timeout: Optional[float] = None) -> View:
        """:meth:`recv_view` on the running event loop: the next message as a read-only
        memoryview for a ``with`` block. Cancelled (or timed out), it has taken nothing."""
        self._check_open()
        _core.check_timeout(timeout)
        return await self._awaited(try_once(self.recv_view), timeout)  # type: ignore[no-any-return]


class View:
    """What the zero-copy views of shm and pubsub share: ``with view as mv`` gives the
    memoryview until :meth:`release` (the ``with`` block's end) lets it go. ``pos`` is the
    ring position whose space the view holds (None: a view of a copy, nothing held);
    a subclass says what holding (:meth:`_hold`) and letting go (:meth:`_let_go_of`)
    mean for its end."""

    __slots__ = ("__weakref__", "_end", "_mv", "pos")

    _mv: Optional[memoryview]
    pos: Optional[int]

    def __init__(self, end: Any, mv: memoryview, pos: Optional[int]) -> None:
        self._end = end
        self._mv = mv
        self.pos = pos
        if pos is not None:
            self._hold()

    def __enter__(self) -> memoryview:
        if self._mv is None:
            raise ValueError("this view has been released")
        return self._mv

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.release()

    def release(self) -> None:
        """Let the memoryview go (idempotent), and the ring space it held."""
        mv, self._mv = self._mv, None
        if mv is not None:
            self._let_go_of(mv)

    def _hold(self) -> None:
        """The view holds ring space (``pos`` is not None): its end keeps it."""
        raise NotImplementedError

    def _let_go_of(self, mv: memoryview) -> None:
        raise NotImplementedError
