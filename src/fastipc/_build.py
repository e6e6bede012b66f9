"""cffi builder for ``fastipc._fastipc`` (out-of-line API mode).

The C API is declared once: the shared status codes in ``csrc/fastipc.h``, and each
mechanism's functions in ``csrc/<mechanism>.h``. The part between the CDEF markers of every
header (``fastipc.h`` first) is the cdef. Every ``csrc/*.c`` file is compiled into the one
extension module, so a new mechanism is a new ``.h``/``.c`` pair and nothing else here.

Build knobs (environment): ``FASTIPC_DEBUG=1`` builds with ``-O0 -g`` and without ``-Werror``;
``FASTIPC_SANITIZE=1`` adds ``-fsanitize=address,undefined``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

# setuptools runs this file from the project root; ffi.compile() changes directory, so the
# header is read through an absolute path and the sources are given relative to the root.
ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def _headers() -> list[Path]:
    return sorted(CSRC.glob("*.h"), key=lambda p: (p.name != "fastipc.h", p.name))


def _cdef() -> str:
    parts = []
    for path in _headers():
        header = path.read_text()
        if "/* CDEF BEGIN */" in header:
            start = header.index("/* CDEF BEGIN */")
            parts.append(header[start : header.index("/* CDEF END */")])
    return "\n".join(parts)


def _flags() -> list[str]:
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-D_GNU_SOURCE", "-fvisibility=hidden"]
    if os.environ.get("FASTIPC_DEBUG") == "1":
        flags += ["-O0", "-g"]
    else:
        flags += ["-O2", "-Werror"]
    if os.environ.get("FASTIPC_SANITIZE") == "1":
        flags += [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            "-g",
        ]
    return flags


def _sources() -> list[str]:
    # csrc/<mechanism>.c: the C core, plain C;
    # csrc/py/*.c: the native handles (Python's limited API)
    paths = [*CSRC.glob("*.c"), *CSRC.glob("py/*.c")]
    return sorted(os.path.relpath(p, os.getcwd()) for p in paths)


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "fastipc._fastipc",
    "".join(f'#include "{path.name}"\n' for path in _headers()),
    sources=_sources(),
    include_dirs=[str(CSRC)],
    libraries=["rt", "pthread"],
    extra_compile_args=_flags(),
    extra_link_args=(
        ["-fsanitize=address,undefined"] if os.environ.get("FASTIPC_SANITIZE") == "1" else []
    ),
    # Without a working C compiler the install still succeeds, and fastipc runs on its pure
    # backend (with one warning at import). The test suite fails loudly in that case.
    optional=True,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True)
