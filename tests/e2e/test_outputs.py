"""No command the README gives writes into a tracked file: runs, sweeps, tables, plots and
benchmarks write to places git ignores by default; the committed results change only with an
explicit --out."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import run_multiple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_optim  # noqa: E402
import make_table  # noqa: E402
import plot_curves  # noqa: E402

pytestmark = pytest.mark.newcomer

COMMITTED = ("results", "bench_results")


def ignored(path: str) -> bool:
    """Whether git ignores ``path`` (relative to the checkout) and tracks nothing under it."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{path.rstrip('/')}/x"], cwd=ROOT)
    tracked = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True).stdout
    return check.returncode == 0 and not tracked


def readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks and inline code, split like a shell."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    inline = re.findall(r"(?<!`)`((?:python |scripts/)[^`\n]*)`(?!`)", readme)
    return [shlex.split(line.replace("<", "").replace(">", "")) for line in [*lines, *inline] if line]


def test_the_default_outputs_are_ignored_by_git():
    defaults = {
        "make_table.py": make_table.parse_args([])[1].out,
        "plot_curves.py": plot_curves.parse_args([])[1].out,
        "bench_optim.py": bench_optim.parse_args([]).out,
        "run_multiple.py": run_multiple.parse_args(["mini"]).root,
        "gpu_check.sh": re.search(r"out=\$\{GPU_CHECK_OUT:-([^}]+)\}", (ROOT / "scripts" / "gpu_check.sh").read_text())[1],
    }
    hydra = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml"))["hydra"]
    defaults["main.py run"] = hydra["run"]["dir"].split("/")[0]
    defaults["main.py multirun"] = hydra["sweep"]["dir"].split("/")[0]
    for command, out in defaults.items():
        assert ignored(str(out)), f"{command} writes to {out} by default, which git does not ignore"


@pytest.mark.parametrize("committed", COMMITTED)
def test_the_committed_results_are_tracked(committed):
    assert not ignored(committed)


def test_no_readme_command_writes_into_the_committed_results():
    commands = readme_commands()
    assert any("make_table.py" in " ".join(c) for c in commands)  # the parsing found them
    for command in commands:
        for flag, value in zip(command, command[1:]):
            if flag in ("--out", "--root"):
                assert ignored(value), f"`{shlex.join(command)}` writes to {value}, which git tracks"
        assert not any(arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) and not ignored(arg.split("=", 1)[1])
                       for arg in command), shlex.join(command)
