"""Property tests of name validation: whatever the string, a clear exception or a name that
the kernel accepts, the same on both backends."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PREFIX
from fastipc import _core, mq, shm

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(name=st.text(max_size=300))
def test_posix_name_is_valid_or_refused(name: str) -> None:
    try:
        normal = _core.posix_name(name)
    except ValueError:
        bare = name[1:] if name.startswith("/") else name
        assert (
            not bare
            or "/" in bare
            or "\0" in bare
            or bare in (".", "..")
            or len(bare.encode("utf-8", "surrogatepass")) > 255
            or any(0xD800 <= ord(c) <= 0xDFFF for c in bare)
        )
        return
    assert normal.startswith("/") and "/" not in normal[1:] and "\0" not in normal
    assert 1 <= len(normal[1:].encode()) <= 255


@given(name=st.one_of(st.integers(), st.binary(), st.none(), st.lists(st.text())))
@settings(max_examples=30, deadline=None)
def test_non_str_names_are_type_errors(name: object) -> None:
    with pytest.raises(TypeError):
        _core.posix_name(name)


@SETTINGS
@given(suffix=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_backends_agree_on_odd_names(backend: str, suffix: str) -> None:
    """An odd but valid name opens, or is refused with the same exception type, on both
    backends; nothing is left behind."""
    name = PREFIX + suffix
    outcomes = []
    for which in ("native", "pure"):
        try:
            q = mq.MessageQueue(name, create=True, max_messages=1, max_message_size=16,
                                backend=which)
        except (ValueError, OSError) as exc:
            outcomes.append(type(exc))
            continue
        assert q.name == name  # as given
        q.unlink()
        q.close()
        outcomes.append(None)
    assert outcomes[0] == outcomes[1]
    try:
        seg = shm.SharedMemory(name, size=4096, create=True, backend=backend)
    except (ValueError, OSError):
        return
    seg.unlink()
    seg.close()
    assert not os.path.exists("/dev/shm/" + name.lstrip("/"))
