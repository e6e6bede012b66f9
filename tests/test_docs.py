"""What can drift between the documentation site (docs/) and the code, checked without
building it: every public name is in the API reference, every page is in a toctree, every
chart the benchmarks page draws exists, every guide page links to its API. The build itself
(warnings as errors) and its doctests run in CI (.ci/run)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC = ["pipe", "signals", "mq", "sem", "shm", "pubsub", "queue", "joinable", "executor",
          "server", "client"]


def pages() -> dict[str, str]:
    """docname -> source text of every page of the site."""
    out = {}
    for path in sorted(DOCS.rglob("*")):
        if path.suffix in (".md", ".rst") and "_build" not in path.parts:
            out[path.relative_to(DOCS).with_suffix("").as_posix()] = path.read_text()
    return out


def toctree_entries(docname: str, text: str) -> set[str]:
    """The documents a page's toctrees list, as docnames relative to the site's root."""
    base = Path(docname).parent
    entries = set()
    blocks = re.findall(r"```\{toctree\}\n(.*?)```", text, re.S)
    blocks += re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)*)", text)
    for block in blocks:
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                entries.add((base / line).as_posix())
    return entries


def test_every_page_is_in_a_toctree() -> None:
    docs = pages()
    listed = set().union(*(toctree_entries(name, text) for name, text in docs.items()))
    assert "index" in docs
    missing = sorted(name for name in docs if name != "index" and name not in listed)
    assert not missing, f"pages in no toctree: {missing}"
    dangling = sorted(listed - set(docs))
    assert not dangling, f"toctree entries without a page: {dangling}"


def test_every_public_module_is_in_the_api_reference() -> None:
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", api, re.M))
    src = ROOT / "src" / "fastipc"
    if src.is_dir():  # a source checkout: no public module may be left out of PUBLIC
        found = {p.stem for p in src.glob("*.py") if not p.stem.startswith("_")}
        assert found == set(PUBLIC), f"update PUBLIC and docs/api.rst: {found ^ set(PUBLIC)}"
    assert {f"fastipc.{m}" for m in PUBLIC} <= documented


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_is_documented(module: str) -> None:
    """automodule documents the names of a module's __all__ defined in that module; a name
    re-exported from another module must then be documented there."""
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", api, re.M))
    mod = importlib.import_module(f"fastipc.{module}")
    for name in mod.__all__:
        obj = getattr(mod, name)
        home = getattr(obj, "__module__", mod.__name__)
        if not callable(obj) or not home.startswith("fastipc"):
            home = mod.__name__  # a constant: documented where it is listed
        assert home in documented, f"fastipc.{module}.{name} lives in {home}, not in api.rst"
        if callable(obj):
            assert getattr(obj, "__doc__", None), f"{home}.{name} has no docstring"


def test_top_level_names_are_documented() -> None:
    import fastipc

    api = (DOCS / "api.rst").read_text()
    for name in fastipc.__all__:
        if name.startswith("__"):
            continue
        assert f"fastipc.{name}" in api, f"fastipc.{name} is not mentioned in api.rst"


def test_every_mechanism_has_a_guide_page_linking_its_api() -> None:
    docs = pages()
    guide = {name for name in docs if name.startswith("guide/")}
    for page in ("pipes", "signals", "mq", "sem", "shm", "pubsub", "queue", "executor",
                 "server", "asyncio"):
        assert f"guide/{page}" in guide


def test_the_charts_the_benchmarks_page_draws_exist() -> None:
    text = (DOCS / "benchmarks.md").read_text()
    charts = re.findall(r"\((charts/[\w.-]+\.svg)\)", text)
    charts += re.findall(r"```\{(?:image|figure)\} (\S+)", text)
    assert charts, "the benchmarks page draws no chart"
    for chart in charts:
        assert (DOCS / chart.lstrip("/")).is_file(), chart


def test_the_docs_extra_brings_what_conf_py_uses() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["docs"]
    names = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0].lower() for req in extras}
    conf = (DOCS / "conf.py").read_text()
    assert "sphinx" in names
    if "myst_parser" in conf:
        assert "myst-parser" in names
    theme = re.search(r'html_theme = "(\w+)"', conf)
    if theme and theme.group(1) not in ("alabaster", "classic", "basic"):
        assert theme.group(1) in names
    plot = (DOCS / "plot_bench.py").read_text()
    if "matplotlib" in plot:
        assert "matplotlib" in names


README = ROOT / "README.md"


def readme_section(title: str) -> str:
    """The text of the README's "## <title>" section, up to the next "## " heading."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"the README has no section {title!r}"
    return match.group(1)


@pytest.fixture
def readme() -> str:
    if not README.is_file():
        pytest.skip("README.md is not beside tests/ (a run from a copy of tests/ alone)")
    return README.read_text()


def test_the_readme_test_command_is_the_one_ci_runs(readme: str) -> None:
    """CI (.ci/run) runs quick-start command 2 as its own line: the two must stay equal."""
    blocks = re.findall(r"```sh\n(.*?)```", readme_section("Quick start"), re.S)
    commands = [line for block in blocks for line in block.splitlines()
                if line and not line.startswith("#")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, "quick-start command 2 is not a line of .ci/run"


def test_the_readme_links_resolve(readme: str) -> None:
    """Relative links and images of the README point to files of the repository, and every
    guide page is linked."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local
    for target in local:
        assert (ROOT / target).exists(), target
    for page in (DOCS / "guide").glob("*.md"):
        assert f"docs/guide/{page.name}" in local, f"the README does not link {page.name}"


def test_the_readme_figures_come_from_the_results(readme: str) -> None:
    """Every figure of the README's measured rows (a unit of speed, time or count) is a
    figure of benchmarks/RESULTS.md, the run the README quotes."""
    results = re.sub(r"\d{4}-\d\d-\d\d", "", (ROOT / "benchmarks" / "RESULTS.md").read_text())
    known = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\d.])", results))
    measured = re.compile(r"µs|GB/s|msg/s|req/s|tasks/s| of 90")
    number = re.compile(r"(?<![\w.`-])\d+(?:\.\d+)?(?![\w:.-])")
    rows = [line for title in ("Compared with what you would otherwise use", "Benchmarks")
            for line in readme_section(title).splitlines()
            if line.startswith("|") and measured.search(line)]
    assert rows
    for row in rows:
        stray = [n for n in number.findall(row) if n not in known]
        assert not stray, f"not in benchmarks/RESULTS.md: {stray} in {row}"
