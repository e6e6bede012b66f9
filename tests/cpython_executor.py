"""CPython's own tests of concurrent.futures.ProcessPoolExecutor, run against
fastipc.ProcessPoolExecutor (fork start method).

    python tests/cpython_executor.py [PATH/test_concurrent_futures.py] [-v]

The backend is fastipc's default (FASTIPC_BACKEND). Exits non-zero if a test fails. Needs
CPython's ``test.test_concurrent_futures``: the single file of 3.8-3.11 or the package of
3.12 and later (some builds and distributions leave it out; give a single file's path to use
another version's).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import sys
import types
import unittest

import fastipc

# The test classes name the executor as futures.ProcessPoolExecutor when they are made.
concurrent.futures.ProcessPoolExecutor = fastipc.ProcessPoolExecutor  # type: ignore[misc,assignment]

PATHS = [a for a in sys.argv[1:] if a.endswith(".py")]
if PATHS:
    spec = importlib.util.spec_from_file_location("test.test_concurrent_futures", PATHS[0])
    assert spec is not None and spec.loader is not None
    cpython_tests = importlib.util.module_from_spec(spec)
    sys.modules["test.test_concurrent_futures"] = cpython_tests
    spec.loader.exec_module(cpython_tests)
else:
    cpython_tests = importlib.import_module("test.test_concurrent_futures")
    if hasattr(cpython_tests, "__path__"):
        # 3.12 and later: a package, one module a topic; the test classes keep their names
        package, cpython_tests = cpython_tests, types.ModuleType("test_concurrent_futures")
        for topic in ("init", "shutdown", "wait", "as_completed", "process_pool", "deadlock"):
            module = importlib.import_module(f"{package.__name__}.test_{topic}")
            for name, value in vars(module).items():
                if name.startswith("ProcessPoolFork"):
                    setattr(cpython_tests, name, value)

TESTS = [
    "ProcessPoolForkInitializerTest.test_initializer",
    "ProcessPoolForkFailingInitializerTest.test_initializer",
    "ProcessPoolForkProcessPoolShutdownTest.test_run_after_shutdown",
    "ProcessPoolForkProcessPoolShutdownTest.test_hang_issue12364",
    "ProcessPoolForkWaitTest.test_first_completed",
    "ProcessPoolForkWaitTest.test_first_exception",
    "ProcessPoolForkWaitTest.test_all_completed",
    "ProcessPoolForkAsCompletedTest.test_no_timeout",
    "ProcessPoolForkAsCompletedTest.test_duplicate_futures",
    "ProcessPoolForkProcessPoolExecutorTest.test_submit",
    "ProcessPoolForkProcessPoolExecutorTest.test_submit_keyword",
    "ProcessPoolForkProcessPoolExecutorTest.test_map",
    "ProcessPoolForkProcessPoolExecutorTest.test_map_exception",
    "ProcessPoolForkProcessPoolExecutorTest.test_max_workers_negative",
    "ProcessPoolForkProcessPoolExecutorTest.test_no_stale_references",
    "ProcessPoolForkProcessPoolExecutorTest.test_free_reference",
    "ProcessPoolForkProcessPoolExecutorTest.test_traceback",
    "ProcessPoolForkProcessPoolExecutorTest.test_map_chunksize",
    "ProcessPoolForkExecutorDeadlockTest.test_error_at_task_pickle",
]
# Left out: tests that look at the standard pool's internals (_processes,
# _executor_manager_thread: test_killed_child, test_saturation, test_processes_terminate,
# test_context_manager_shutdown, test_del_shutdown, test_shutdown_no_wait,
# test_shutdown_deadlock_pickle); the tests of ExecutorDeadlockTest that expect a crash or
# an unpicklable call or result to break the whole pool with BrokenProcessPool (here the
# task fails alone: WorkerDied, or the error); test_interpreter_shutdown (its child imports
# the standard pool); test_cancel_futures (expects some of 50 tasks submitted to a pool
# whose workers have not started yet to run before shutdown(cancel_futures=True)).


def main() -> int:
    verbosity = 2 if "-v" in sys.argv else 1
    suite = unittest.defaultTestLoader.loadTestsFromNames(TESTS, cpython_tests)
    result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
    print(f"fork {fastipc.BACKEND}: ran {result.testsRun}, failures {len(result.failures)}, "
          f"errors {len(result.errors)}, skipped {len(result.skipped)}")
    return 0 if result.wasSuccessful() and result.testsRun == len(TESTS) else 1


if __name__ == "__main__":
    sys.exit(main())
