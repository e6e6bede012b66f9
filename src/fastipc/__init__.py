"""fastipc: Linux inter-process communication for Python, with the hot paths in C.

Mechanisms, one module each: :mod:`fastipc.pipe` (pipes and FIFOs), :mod:`fastipc.signals`,
:mod:`fastipc.mq` (POSIX message queues), :mod:`fastipc.sem` (POSIX semaphores),
:mod:`fastipc.shm` (shared memory and the Writer/Reader channel) and :mod:`fastipc.server`
(TCP and Unix-domain servers and clients).

``fastipc.BACKEND`` is ``"native"`` (the compiled cffi module) or ``"pure"`` (Python
fallbacks with the same behaviour), chosen by ``FASTIPC_BACKEND=native|pure|auto``.
"""

from fastipc._core import BACKEND

__version__ = "0.1.0"
__all__ = ["BACKEND", "__version__"]
