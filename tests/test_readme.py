"""Every ```python block of README.md and of the docs' Markdown pages runs as written, each in a fresh
interpreter in an empty folder.

A block that appears word for word on several pages (the README's "Use a trained model" example and its
docs page) runs once. The tutorials in docs/tutorials/ are notebooks (``{code-cell}``
blocks, no ```python fences): the docs build executes them.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_DOCS_DIRS = ("_build", "jupyter_execute")


def markdown_pages() -> list[str]:
    """README.md and every Markdown page of docs/ (relative paths), outside build outputs."""
    pages = ["README.md"]
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)):
        relative = os.path.relpath(path, ROOT)
        if not any(part in SKIPPED_DOCS_DIRS for part in relative.split(os.sep)):
            pages.append(relative)
    return pages


def python_blocks(page: str = "README.md") -> list[str]:
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    # Fenced blocks, possibly indented inside a list item; the indentation is removed.
    blocks = []
    for match in re.finditer(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M):
        indent = len(match.group(1))
        blocks.append("".join(line[indent:] + "\n" for line in match.group(2).splitlines()))
    return blocks


def unique_blocks() -> list[tuple[str, int]]:
    """(page, index) of every Python block, the first page only for a block that appears on several."""
    seen, out = set(), []
    for page in markdown_pages():
        for index, block in enumerate(python_blocks(page)):
            if block not in seen:
                seen.add(block)
                out.append((page, index))
    return out


ALL_BLOCKS = unique_blocks()


def test_readme_has_the_training_loop_example():
    blocks = python_blocks()
    assert any("train_step" in b and "losses.neg_elbo" in b and "optax" in b for b in blocks)


def test_docs_pages_are_found():
    pages = markdown_pages()
    assert "README.md" in pages and os.path.join("docs", "getting_started.md") in pages
    assert not any("_build" in p for p in pages)


@pytest.mark.parametrize("page,index", ALL_BLOCKS, ids=[f"{p}:{i}" for p, i in ALL_BLOCKS])
def test_markdown_python_block_runs(page, index, tmp_path):
    block = python_blocks(page)[index]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{page} block {index} failed:\n{block}\n{result.stderr[-3000:]}"
