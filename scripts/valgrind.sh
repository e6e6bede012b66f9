#!/usr/bin/env bash
# The native handles and the C core under valgrind memcheck:
#
#   scripts/valgrind.sh [pytest args]    (default: the native tests of every handle, see below)
#
# Builds csrc/ with -O1 -g (no sanitizer) in a copy of the tree, puts that copy first on the
# path, and runs pytest under memcheck with PYTHONMALLOC=malloc, following child processes
# (fork and exec); every process writes its own log. Any memcheck error in any process
# (invalid read/write, use of an uninitialised value, bad free, a definite leak) fails the
# run, and a summary groups the errors by the innermost frame in csrc/. Test names are
# relative to tests/.
#
# Environment: PYTHON (the interpreter for the venv, python3), VALGRIND_VENV (the venv with
# the test dependencies, .venv-valgrind; it may be an existing one), VALGRIND_LOGS (the log
# directory, a fresh one under $TMPDIR), VALGRIND_TIMEOUT (seconds per test, 1200: memcheck
# is 20-50 times slower than the native run), VALGRIND_OPTS (more memcheck options).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }
PY=${PYTHON:-python3}
VENV=$(realpath -m "${VALGRIND_VENV:-.venv-valgrind}")
LOGS=$(realpath -m "${VALGRIND_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/fastipc-valgrind.XXXXXX")}")
mkdir -p "$LOGS"
rm -f "$LOGS"/vg.*.log

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q '.[test]'  # the dependencies; the module under test is built next
fi
"$VENV/bin/pip" install -q --upgrade setuptools cffi  # the build below runs setup.py directly

# Build the C core in place in a copy (setuptools reuses objects in build/ whatever the flags
# were) and put that copy first on the path. FASTIPC_DEBUG=1 gives -g without -Werror; the
# compiler wrapper puts -O1 after every other flag (the last -O wins): -O0 would make memcheck
# slower still, -O2 folds the lines of a stack together.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r csrc src setup.py setup.cfg pyproject.toml README.md LICENSE MANIFEST.in "$src/"
rm -rf "$src/build" "$src"/src/fastipc/*.so
cc=$(command -v "${CC:-gcc}")
printf '#!/bin/sh\nexec %s "$@" -O1 -g\n' "$cc" >"$src/cc"
chmod +x "$src/cc"
(cd "$src" && CC="$src/cc" FASTIPC_DEBUG=1 "$VENV/bin/python" setup.py -q build_ext --inplace \
    >"$LOGS/build.log" 2>&1) || { cat "$LOGS/build.log" >&2; exit 1; }
so=$(ls "$src"/src/fastipc/_fastipc*.so)
# the flags gcc recorded: the last -O must be the -O1 asked for (no pipe into grep -q: readelf
# would get SIGPIPE, and pipefail would call that a miss)
readelf --debug-dump=info "$so" >"$LOGS/dwarf.txt" 2>/dev/null || true
grep -m1 DW_AT_producer "$LOGS/dwarf.txt" | grep -o -- ' -O[0-9s]*' | tail -n1 | grep -qx ' -O1' \
    || { echo "valgrind.sh: $so was not built with -O1 -g" >&2; exit 1; }
rm -f "$LOGS/dwarf.txt"

# What runs by default: the native backend's tests of every handle (sem, mq, pipe, client,
# shm, fan-out, Queue, the life cycle, the call buffers of a fork child's vanished threads):
# `-k native` without the cross-backend pairs. Left
# out, because they cannot pass under memcheck (give test names to run them anyway):
# - the awaitables (`async`, `aio`, `uvloop`, `awaitables`): valgrind does not know
#   futex_waitv and fails it with ENOSYS;
# - every test that starts a fresh interpreter (run_python, start_python, sys.executable, the
#   spawn and forkserver start methods, found in its source or in a function of its module
#   that it names), the cross-backend pairs among them: under memcheck an interpreter takes
#   20 s or more to start and its leak check minutes to end, beyond the deadlines those
#   tests give their peer;
# - the tests named in SLOW, which wait for a forked child's exit (and so for its leak
#   check) or measure time against a slower peer.
SLOW=(
    test_waiter_started_first test_reader_times_out_without_writer
    test_an_exception_raised_into_receive_loses_no_message test_child_writer_killed_midstream
    test_close_in_a_fork_child_while_a_parent_thread_was_blocked
    test_fork_child_neither_keeps_the_owner_alive_nor_removes_the_queue
    test_four_producers_three_consumers_exactly_once test_start_methods
)
MODULES=(test_sem.py test_mq.py test_pipe.py test_client.py test_shm.py test_pubsub.py
    test_queue.py test_lifecycle.py test_handle_leaks.py)
if [ $# -eq 0 ]; then
    fresh=$("$VENV/bin/python" - "${MODULES[@]/#/tests/}" <<'PY'
import ast, sys
MARKS = ("run_python(", "start_python(", "sys.executable", '"spawn"', '"forkserver"')
for path in sys.argv[1:]:
    text = open(path).read()
    funcs = [f for f in ast.walk(ast.parse(text)) if isinstance(f, ast.FunctionDef)]
    marked = {f.name for f in funcs if any(m in ast.get_source_segment(text, f) for m in MARKS)}
    for f in funcs:
        if f.name.startswith("test_") and (f.name in marked or any(
                isinstance(n, ast.Name) and n.id in marked for n in ast.walk(f))):
            print(f.name)
PY
)
    skip=$(printf '%s\n' $fresh "${SLOW[@]}" | sort -u | paste -sd' ' | sed 's/ / or /g')
    futex="async or aio or uvloop or awaitables"
    set -- "${MODULES[@]}" -k "native and not pure and not ($futex) and not ($skip)"
fi

export PYTHONPATH="$src/src"
export FASTIPC_BACKEND=native
export PYTHONMALLOC=malloc  # Python's own allocator would hide heap errors
export PYTHONFAULTHANDLER=1
cd tests  # the checked build of the copy above, not the source tree
set +e
# --trace-children: the tests' child processes (multiprocessing spawn, subprocess) run the
# same interpreter under memcheck, each with its own log (%p); tools a test may exec are not
# followed. --errors-for-leak-kinds=definite: a leak counts only if nothing points to it (the
# interpreter keeps much reachable at exit); --leak-check=full reports it with its stack.
# --track-origins=yes (where an uninitialised value came from) doubles the time: add it with
# VALGRIND_OPTS when chasing one.
# shellcheck disable=SC2086
valgrind --tool=memcheck --error-exitcode=99 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --num-callers=40 --fullpath-after="$src/" \
    --trace-children=yes \
    --trace-children-skip='*/sh,*/bash,*/dash,*/env,*/ldconfig*,*/gcc,*/cc,*/uname,*/ls' \
    --log-file="$LOGS/vg.%p.log" \
    --suppressions="$root/scripts/valgrind-python.supp" ${VALGRIND_OPTS:-} \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider -x \
    --timeout="${VALGRIND_TIMEOUT:-1200}" "$@"
rc=$?
set -e

# One line per error site: the kind, the innermost frame in csrc/ (or the innermost frame
# at all, marked "not csrc/"), how often, and in which logs.
summary=0
"$VENV/bin/python" - "$LOGS" <<'EOF' || summary=99
import collections, pathlib, re, sys

logs = pathlib.Path(sys.argv[1])
frame = re.compile(r"==\d+==\s+(?:at|by) 0x[0-9A-F]+: (.*?) \((.*?)\)$")
start = re.compile(
    r"==\d+== (Invalid (?:read|write|free)|Mismatched free|Conditional jump|"
    r"Use of uninitialised|Syscall param|Source and destination overlap|"
    r"Argument '.*' of function|.*definitely lost in)"
)
sites = collections.defaultdict(lambda: [0, set()])
failed = []
for log in sorted(logs.glob("vg.*.log")):
    text = log.read_text(errors="replace").splitlines()
    m = [re.search(r"ERROR SUMMARY: (\d+) errors", line) for line in text]
    errors = max((int(x.group(1)) for x in m if x), default=0)
    if errors:
        failed.append((log.name, errors))
    kind = where = first = None
    for line in text + ["==0== "]:
        s = start.match(line)
        if s or re.match(r"==\d+== $", line):  # an error starts, or the last one ended
            if kind and where is None:  # no frame of ours in its stack
                where = f"not csrc/ (innermost: {first})"
                sites[(kind, where)][0] += 1
                sites[(kind, where)][1].add(log.name)
            kind = s.group(1) if s else None
            if kind and "definitely lost" in kind:
                kind = "definitely lost"
            where = first = None
            continue
        f = frame.match(line)
        if kind and f and where is None:
            if "vgpreload" not in f.group(2):  # not the allocator of a leak
                first = first or f"{f.group(1)} ({f.group(2)})"
            if f.group(2).startswith("csrc/"):
                where = f"{f.group(2)} {f.group(1)}"
                sites[(kind, where)][0] += 1
                sites[(kind, where)][1].add(log.name)
for (kind, where), (n, names) in sorted(sites.items(), key=lambda x: x[0][1]):
    print(f"valgrind.sh: {n:4d} x {kind}: {where}  [{', '.join(sorted(names)[:3])}]")
for name, n in failed:
    print(f"valgrind.sh: {name}: {n} errors")
print(f"valgrind.sh: {len(list(logs.glob('vg.*.log')))} process logs in {logs}")
sys.exit(1 if failed else 0)
EOF
# pytest's status (99: memcheck errors in the main process), else the children's errors
if [ "$rc" -eq 0 ]; then rc=$summary; fi
exit "$rc"
