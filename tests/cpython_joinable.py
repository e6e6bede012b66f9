"""CPython's own tests of multiprocessing's JoinableQueue and SimpleQueue, run against
fastipc.JoinableQueue and fastipc.SimpleQueue.

    python tests/cpython_joinable.py fork|spawn|forkserver [-v]

The backend is fastipc's default (FASTIPC_BACKEND). Exits non-zero if a test fails. Needs
the interpreter's ``test`` package (``test._test_multiprocessing``), which CPython's own
builds have and some distributions' Pythons lack.
"""

from __future__ import annotations

import multiprocessing
import sys
import unittest

import test._test_multiprocessing as cpython_tests

import fastipc

# The mixin builds the queue of test_task_done with self.JoinableQueue(); the other tests
# call multiprocessing.JoinableQueue() and multiprocessing.SimpleQueue() themselves.
cpython_tests.ProcessesMixin.JoinableQueue = staticmethod(fastipc.JoinableQueue)
multiprocessing.JoinableQueue = fastipc.JoinableQueue  # type: ignore[assignment,misc]
multiprocessing.SimpleQueue = fastipc.SimpleQueue  # type: ignore[assignment,misc]

METHOD = sys.argv[1] if len(sys.argv) > 1 else "fork"
cpython_tests.install_tests_in_module_dict(globals(), METHOD, only_type="processes")

TESTS = [
    "WithProcessesTestQueue.test_task_done",
    "WithProcessesTestQueue.test_closed_queue_put_get_exceptions",
    "TestSimpleQueue.test_empty",
    "TestSimpleQueue.test_close",
]
# Left out: TestSimpleQueue.test_closed, which looks at the pipe ends of multiprocessing's
# implementation (queue._reader, queue._writer: private attributes, @cpython_only); a
# fastipc.SimpleQueue has no pipe.


def main() -> int:
    # only_type="processes" installed the processes flavour of every BaseTestCase class;
    # TestSimpleQueue is a plain TestCase that install_tests_in_module_dict skips then.
    globals()["TestSimpleQueue"] = cpython_tests.TestSimpleQueue
    verbosity = 2 if "-v" in sys.argv else 1
    suite = unittest.defaultTestLoader.loadTestsFromNames(TESTS, sys.modules[__name__])
    setup = globals()["setUpModule"]
    teardown = globals()["tearDownModule"]
    setup()
    try:
        result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
    finally:
        teardown()
    print(f"{METHOD} {fastipc.BACKEND}: ran {result.testsRun}, "
          f"failures {len(result.failures)}, errors {len(result.errors)}, "
          f"skipped {len(result.skipped)}")
    return 0 if result.wasSuccessful() and result.testsRun == len(TESTS) else 1


if __name__ == "__main__":
    sys.exit(main())
