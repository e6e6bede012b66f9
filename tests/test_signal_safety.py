"""Every loop inside a ``try`` of fastipc's Python keeps its signal check inside the try.

CPython checks for pending signals at a loop's backward jump. Where the jump instruction is
left out of the exception table entry that covers the rest of the loop, an exception raised
there by a signal handler (Ctrl-C, a handler that raises) skips the ``except``/``finally``
of the ``try`` around the loop: what they keep or release (a message taken, a lock held) is
lost. CPython 3.13 compiles a ``while <condition>:`` loop so (python/cpython#130279, and
#108214 for 3.11-3.12 in other shapes); ``while True:`` with a ``break`` is compiled safely.
This test compiles every module of the installed package with the running interpreter and
fails on any such jump."""

from __future__ import annotations

import dis
import itertools
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import fastipc

PACKAGE = Path(fastipc.__file__).parent


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def unguarded_jumps(code: types.CodeType) -> list[int]:
    """Lines of the backward jumps of ``code`` that a handler covers just before and at
    their target but not at the jump itself."""
    instructions = list(dis.get_instructions(code))
    at = {i.offset: i for i in instructions}
    entries = [e for e in dis.Bytecode(code).exception_entries
               if "STOPITERATION" not in at[e.target].argrepr]  # a generator's own, implicit
    found = []
    for before, jump in itertools.pairwise(instructions):
        if not jump.opname.startswith("JUMP_BACKWARD") or jump.opname.endswith("NO_INTERRUPT"):
            continue
        def handlers(offset: int) -> set[int]:
            return {e.target for e in entries if e.start <= offset < e.end}

        if (handlers(before.offset) & handlers(jump.argval)) - handlers(jump.offset):
            found.append(jump.positions.lineno if jump.positions and
                         jump.positions.lineno else -1)
    return found


def test_no_signal_check_escapes_its_try() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = compile(path.read_text(), str(path), "exec")
        for code in _codes(module):
            problems += [f"{path.relative_to(PACKAGE.parent)}:{line} in {code.co_qualname}"
                         for line in unguarded_jumps(code)]
    assert not problems, f"Python {sys.version.split()[0]}: " + "\n".join(problems)


def test_the_check_finds_the_shape_that_escapes() -> None:
    """The checker is not vacuous: a ``while <condition>:`` loop first in a ``try`` is the
    shape CPython 3.13 compiles unguarded; ``while True`` with a ``break`` is guarded."""
    source = (
        "def f(items):\n"
        "    i = 0\n"
        "    try:\n"
        "        while i < len(items):\n"
        "            i += 1\n"
        "    except BaseException:\n"
        "        items.append(i)\n"
        "        raise\n"
        "def g(items):\n"
        "    i = 0\n"
        "    try:\n"
        "        while True:\n"
        "            if i >= len(items):\n"
        "                break\n"
        "            i += 1\n"
        "    except BaseException:\n"
        "        items.append(i)\n"
        "        raise\n")
    codes = {c.co_name: c for c in _codes(compile(source, "<shape>", "exec"))}
    assert unguarded_jumps(codes["g"]) == []
    if sys.version_info[:2] == (3, 13):
        assert unguarded_jumps(codes["f"]) == [4]
