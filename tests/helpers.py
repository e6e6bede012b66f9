"""Helpers for tests: another process doing X."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any


def run_python(
    code: str, *args: str, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process (another process doing X); return its result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh Python process and return it (the caller waits for it)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], text=True, **kwargs
    )
