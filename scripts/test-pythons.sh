#!/usr/bin/env bash
# Build one wheel, install it into a fresh venv for every CPython found (pyenv's 3.11-3.13 by
# default, or the interpreters given), and run the test suite against the installed package
# from outside the source tree: once with the default backend, once with FASTIPC_BACKEND=pure.
#
#   scripts/test-pythons.sh                          # every ~/.pyenv/versions/3.{9..13}*
#   scripts/test-pythons.sh /usr/bin/python3.12 ...  # these interpreters
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $# -gt 0 ]; then
    pythons=("$@")
else
    pythons=()
    for v in 3.11 3.12 3.13; do
        for p in "$HOME"/.pyenv/versions/"$v".*/bin/python"$v"; do
            [ -x "$p" ] && pythons+=("$p") && break
        done
    done
fi
[ ${#pythons[@]} -gt 0 ] || { echo "no interpreters found" >&2; exit 2; }

"${pythons[0]}" -m venv "$work/build" && "$work/build/bin/pip" install -q --upgrade pip build
"$work/build/bin/python" -m build -q --wheel --outdir "$work/dist" "$root" >/dev/null
wheel=$(ls "$work"/dist/*.whl)
echo "wheel: $(basename "$wheel")"

status=0
for py in "${pythons[@]}"; do
    version=$("$py" -c 'import platform; print(platform.python_version())')
    venv="$work/venv-$version"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "$wheel[test]"
    for backend in auto pure; do
        if (cd "$root/tests" && FASTIPC_BACKEND=$backend "$venv/bin/python" -m pytest -q -p no:cacheprovider > "$work/log" 2>&1); then
            echo "Python $version, FASTIPC_BACKEND=$backend: $(tail -n 1 "$work/log")"
        else
            echo "Python $version, FASTIPC_BACKEND=$backend: FAILED"; tail -n 30 "$work/log"; status=1
        fi
    done
done
exit $status
