#!/usr/bin/env bash
# Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer and run the test suite
# (or the pytest arguments given) against it. Any sanitizer report fails the run.
#
#   scripts/sanitize.sh                 # the whole suite
#   scripts/sanitize.sh tests/test_pipe.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SANITIZE_VENV:-.venv-sanitize}

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q '.[test]'  # the dependencies; the package is rebuilt next
# build from a copy: setuptools reuses objects in build/ whatever the flags were
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r csrc src setup.py pyproject.toml README.md LICENSE MANIFEST.in "$src/"
rm -rf "$src/build" "$src"/src/fastipc/*.so
FASTIPC_SANITIZE=1 FASTIPC_DEBUG=1 "$VENV/bin/pip" install -q --no-cache-dir --force-reinstall --no-deps "$src"

# (find the module without importing it: loading it needs the preload below)
so=$("$VENV/bin/python" -c 'import importlib.util as u, pathlib
print(next(pathlib.Path(u.find_spec("fastipc").submodule_search_locations[0]).glob("_fastipc*.so")))')
if ! nm -D "$so" | grep -q __asan_init; then
    echo "sanitize.sh: $so is not built with AddressSanitizer" >&2
    exit 1
fi

# Python's own allocator hides heap errors from ASan; leaks of the interpreter are not ours.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
export FASTIPC_BACKEND=native
cd tests  # import the installed package, not the source tree
"../$VENV/bin/python" -m pytest -q -p no:cacheprovider "${@:-.}"
