"""fastipc: Linux inter-process communication for Python, with the hot paths in C.

Mechanisms, one module each: :mod:`fastipc.pipe` (pipes and FIFOs), :mod:`fastipc.signals`,
:mod:`fastipc.mq` (POSIX message queues), :mod:`fastipc.sem` (POSIX semaphores),
:mod:`fastipc.shm` (shared memory, the Writer/Reader channel, Publisher/Subscriber fan-out and
the named Queue) and :mod:`fastipc.server` (TCP and Unix-domain servers and clients).
:class:`fastipc.Queue` is a drop-in for ``multiprocessing.Queue`` in shared memory;
:class:`fastipc.JoinableQueue` and :class:`fastipc.SimpleQueue` for their multiprocessing
counterparts; :class:`fastipc.ProcessPoolExecutor` a process pool over it that survives its
workers' deaths.

``fastipc.BACKEND`` is ``"native"`` (the compiled cffi module) or ``"pure"`` (Python
fallbacks with the same behaviour), chosen by ``FASTIPC_BACKEND=native|pure|auto``.
"""

from typing import TYPE_CHECKING, Any

from fastipc._core import BACKEND
from fastipc.joinable import JoinableQueue, SimpleQueue
from fastipc.queue import Queue

if TYPE_CHECKING:
    from fastipc.executor import ProcessPoolExecutor, WorkerDied

__version__ = "0.1.0"
__all__ = [
    "BACKEND",
    "JoinableQueue",
    "ProcessPoolExecutor",
    "Queue",
    "SimpleQueue",
    "WorkerDied",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The process pool is imported when first used (it brings in multiprocessing and
    concurrent.futures, which ``import fastipc`` alone does not need)."""
    if name in ("ProcessPoolExecutor", "WorkerDied"):
        from fastipc import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'fastipc' has no attribute {name!r}")
