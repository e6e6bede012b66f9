"""The channel's layout is defined once for Python (fastipc._shm_layout): hold it against the
C constants (the FIPC_SHM_* enum of csrc/shm.h, through the cffi module) and against the
tables of docs/shm-layout.md, so that none of the three can drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastipc import _core
from fastipc import _shm_layout as layout

DOC = (Path(__file__).resolve().parents[1] / "docs" / "shm-layout.md").read_text()

HEADER_FIELDS = {
    "magic": "OFF_MAGIC", "version": "OFF_VERSION", "capacity": "OFF_CAPACITY",
    "data_offset": "OFF_DATA", "max_message": "OFF_MAXMSG", "writer_pid": "OFF_WPID",
    "writer_state": "OFF_WSTATE", "reader_pid": "OFF_RPID", "reader_state": "OFF_RSTATE",
    "head": "OFF_HEAD", "tail": "OFF_TAIL", "data_seq": "OFF_DSEQ",
    "reader_waiting": "OFF_RWAIT", "space_seq": "OFF_SSEQ", "writer_waiting": "OFF_WWAIT",
}
CONSTANTS = [
    "HEADER", "MAGIC", "VERSION", "MIN_CAPACITY", *HEADER_FIELDS.values(), "ST_NONE",
    "ST_OPEN", "ST_CLOSED", "FR_WHOLE", "FR_FIRST", "FR_NEXT", "FR_PAD", "FR_HDR",
    "FIRST_HDR", "MAX_CHUNK", "LOCK_WRITER", "LOCK_READER",
]


@pytest.mark.parametrize("const", CONSTANTS)
def test_python_matches_c(const: str) -> None:
    _, lib = _core.native()
    c_name = "FIPC_SHM_" + const
    assert getattr(lib, c_name) == getattr(layout, const), c_name


def test_header_table_matches() -> None:
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([a-z_]+)\s+(?:writer|reader)\s", DOC, re.M)
    found = {field: (int(off), int(size)) for off, size, field in rows}
    assert set(found) == set(HEADER_FIELDS)
    for field, const in HEADER_FIELDS.items():
        assert found[field][0] == getattr(layout, const), field
    assert re.search(rf"^\s+{layout.HEADER}\s+capacity\s+ring data", DOC, re.M)
    assert f"0x{layout.MAGIC:08X}" in DOC
    assert f"(version {layout.VERSION})" in DOC


def test_frame_and_lock_tables_match() -> None:
    kinds = dict((name, int(n)) for n, name in re.findall(r"(\d) (WHOLE|FIRST|NEXT|PAD)", DOC))
    assert kinds == {"WHOLE": layout.FR_WHOLE, "FIRST": layout.FR_FIRST,
                     "NEXT": layout.FR_NEXT, "PAD": layout.FR_PAD}
    locks = dict((who, int(byte)) for byte, who in
                 re.findall(r"^\s+(\d)\s+(writer|reader)\s*$", DOC, re.M))
    assert locks == {"writer": layout.LOCK_WRITER, "reader": layout.LOCK_READER}
    assert layout.TEMP_SUFFIX in DOC
    states = re.search(r"reader_state\s+reader\s+(\d) none yet, (\d) attached, (\d) closed",
                       DOC)
    assert states is not None
    assert tuple(map(int, states.groups())) == (layout.ST_NONE, layout.ST_OPEN,
                                                layout.ST_CLOSED)


def test_header_parser_reads_a_real_header(name: str) -> None:
    from fastipc import shm

    with shm.Writer(name, capacity=8192) as w:
        w.send(b"x" * 10)
        with open(f"/dev/shm/{name}", "rb") as f:
            header = layout.parse_header(f.read(layout.HEADER))
        assert header is not None
        assert header.capacity == 8192 and header.version == layout.VERSION
        assert header.writer_state == layout.ST_OPEN and header.reader_state == layout.ST_NONE
        assert header.head == layout.FR_HDR + 16 and header.tail == 0
    assert layout.parse_header(b"\0" * layout.HEADER) is None
    assert layout.parse_header(b"FSHM") is None
