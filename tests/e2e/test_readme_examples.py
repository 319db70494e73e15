"""The README's "Use it in your own training code": every snippet is an excerpt of a script in
examples/, and every script runs and lowers its loss."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ranks import free_port, loopback_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SECTION = "## Use it in your own training code"
# The packages beyond torch each example needs.
REQUIREMENTS = {
    "plain_loop": [],
    "sls_closure": [],
    "hf_trainer": ["transformers", "datasets", "accelerate"],
    "lightning_module": ["lightning"],
}
LOSS_LINE = re.compile(r"loss (\d+\.\d+) -> (\d+\.\d+)")




def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def snippets() -> list[tuple[str, str]]:
    """(example file name, code) for every python block of the section."""
    blocks = re.findall(r"```python\n(.*?)```", readme_section(), flags=re.S)
    out = []
    for block in blocks:
        first, _, code = block.partition("\n")
        match = re.fullmatch(r"# examples/(\w+\.py)", first)
        assert match, f"a README snippet must start with '# examples/<script>.py', got {first!r}"
        out.append((match.group(1), code))
    return out


def is_excerpt(chunk: list[str], lines: list[str]) -> bool:
    """Whether ``chunk`` is a run of consecutive ``lines``, up to a common indentation."""
    expected = textwrap.dedent("\n".join(chunk))
    n = len(chunk)
    return any(textwrap.dedent("\n".join(lines[i : i + n])) == expected for i in range(len(lines) - n + 1))


@pytest.mark.parametrize("name, code", snippets(), ids=[name for name, _ in snippets()])
def test_readme_snippet_is_an_excerpt_of_its_example(name, code):
    lines = (EXAMPLES / name).read_text().splitlines()
    chunk: list[str] = []
    for line in code.rstrip("\n").splitlines() + ["# ..."]:  # "# ..." separates excerpts
        if line.strip() == "# ...":
            shown = "\n".join(chunk)
            assert is_excerpt(chunk, lines), f"README snippet not found in examples/{name}:\n{shown}"
            chunk = []
        else:
            chunk.append(line)


def test_the_section_covers_every_example():
    section = readme_section()
    for path in sorted(EXAMPLES.glob("*.py")):
        assert f"examples/{path.name}" in section


@pytest.mark.parametrize("name", sorted(REQUIREMENTS))
def test_example_runs_and_its_loss_falls(name, capsys):
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"examples/{path.name} is not there")
    for package in REQUIREMENTS[name]:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"examples/{path.name} needs {package}")
    runpy.run_path(str(path), run_name="__main__")
    results = LOSS_LINE.findall(capsys.readouterr().out)
    assert results, f"examples/{path.name} printed no 'loss A -> B' line"
    for first, last in results:
        assert float(last) < float(first)


@pytest.mark.slow  # two ranks, each importing torch: about 40 s on two busy CPU cores
def test_fsdp_example_runs():
    path = EXAMPLES / "fsdp.py"
    if not path.exists():
        pytest.skip("examples/fsdp.py is not there")
    env = {**os.environ, **loopback_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loss" in done.stdout
