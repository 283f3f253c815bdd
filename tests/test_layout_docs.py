"""The map of the house stays true: the README's Layout block and docs/architecture.md name every
package and top-level module of src/bilstm_exp, and the layer table of docs/architecture.md is
``LAYERS`` of tests/test_architecture.py, row by row."""

from __future__ import annotations

import re
from fnmatch import fnmatch

import pytest

from tests.conftest import ROOT
from tests.test_architecture import LAYERS, PACKAGE


def layout_block(text: str) -> str:
    """The fenced block that starts with ``src/bilstm_exp/``."""
    start = text.index("```\nsrc/bilstm_exp/\n")
    return text[start:text.index("```\n", start + 4)]


def named_entries(block: str) -> set[str]:
    """The files and folders of src/bilstm_exp the block names: lines indented by two spaces."""
    return {line.split()[0] for line in block.splitlines() if re.match(r"  \S", line)}


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_layout_block_names_every_package_and_top_level_module_and_nothing_else(doc):
    present = {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    present |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert named_entries(layout_block((ROOT / doc).read_text(encoding="utf-8"))) == present


def test_the_documented_layers_are_the_tested_layers():
    """Row k of the table names (with ``*`` patterns) exactly the modules of LAYERS[k], and no other."""
    rows = [line for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == list(range(len(LAYERS)))
    every = set().union(*LAYERS)
    problems = []
    for index, (row, members) in enumerate(zip(rows, LAYERS, strict=True)):
        patterns = re.findall(r"`([^`]+)`", row.split("|")[3])
        problems += [f"layer {index}: {m} not in the table" for m in sorted(members)
                     if not any(fnmatch(m, p) for p in patterns)]
        problems += [f"layer {index}: `{p}` matches {sorted(_matching(p, every))}" for p in patterns
                     if not _matching(p, members) or _matching(p, every - members)]
    assert problems == []


def _matching(pattern: str, modules: set[str]) -> list[str]:
    return [m for m in modules if fnmatch(m, pattern)]
