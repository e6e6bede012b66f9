#!/usr/bin/env bash
# Run the test suite (or the pytest arguments given) against a checked build of the C core:
#
#   scripts/sanitize.sh [pytest args]             AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/sanitize.sh --valgrind [pytest args]  valgrind memcheck (slow: give it a subset)
#
# Any report fails the run. Only the native backend is exercised (FASTIPC_BACKEND=native and
# the tests' native parameter); child processes run unchecked.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=asan
if [ "${1:-}" = "--valgrind" ]; then
    mode=valgrind
    shift
fi
PY=${PYTHON:-python3}
VENV=$(realpath -m "${SANITIZE_VENV:-.venv-$mode}")

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip setuptools
"$VENV/bin/pip" install -q '.[test]'  # the dependencies; the module under test is built next

# build the C core in place in a copy (setuptools reuses objects in build/ whatever the flags
# were), and put that copy first on the path: the tests import it, not the installed one
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r csrc src setup.py setup.cfg pyproject.toml README.md LICENSE MANIFEST.in "$src/"
rm -rf "$src/build" "$src"/src/fastipc/*.so
if [ $mode = asan ]; then export FASTIPC_SANITIZE=1; fi
(cd "$src" && FASTIPC_DEBUG=1 "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null) || exit 1
unset FASTIPC_SANITIZE
so=$(ls "$src"/src/fastipc/_fastipc*.so)
export PYTHONPATH="$src/src"

export FASTIPC_BACKEND=native
export PYTHONMALLOC=malloc  # Python's own allocator would hide heap errors
cd tests  # the checked build of the copy above, not the source tree
if [ $mode = asan ]; then
    # not a pipe: grep -q leaves early, nm gets SIGPIPE, and pipefail would call that a miss
    grep -q __asan_init <(nm -D "$so") || { echo "sanitize.sh: $so lacks ASan" >&2; exit 1; }
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
    export ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${@:-.}"
else
    command -v valgrind >/dev/null || { echo "sanitize.sh: valgrind is not installed" >&2; exit 1; }
    # errors inside the interpreter and libc start-up are not ours: only frames in
    # _fastipc count (--error-exitcode applies to errors left after the suppressions)
    valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=yes \
        --suppressions=../scripts/valgrind-python.supp --quiet \
        "$VENV/bin/python" -m pytest -q -p no:cacheprovider -x "${@:-.}"
fi
