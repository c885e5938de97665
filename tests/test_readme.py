"""Every ```python block of README.md runs as written, each in a fresh interpreter in an empty folder.

A block whose first line is ``# not run`` is skipped (none is, today).
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    # Fenced blocks, possibly indented inside a list item; the indentation is removed.
    blocks = []
    for match in re.finditer(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M):
        indent = len(match.group(1))
        blocks.append("".join(line[indent:] + "\n" for line in match.group(2).splitlines()))
    return blocks


def test_readme_has_the_training_loop_example():
    blocks = python_blocks()
    assert any("train_step" in b and "losses.neg_elbo" in b and "optax" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path):
    block = python_blocks()[index]
    if block.startswith("# not run"):
        pytest.skip("marked as not run")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"README block {index} failed:\n{block}\n{result.stderr[-3000:]}"
