"""Every example names the one command that installs what it imports: a ``pip install -e`` of
this checkout with an extra of pyproject.toml whose requirements (the base ones and those of the
extras it names, recursively) cover every third-party import of the script."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.newcomer

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
INSTALL = re.compile(r"^\s*pip install -e (?:\.|\"\.\[([\w,-]+)\]\")(?:\s|$)", re.M)
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def normalized(name: str) -> str:
    """A distribution name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: tuple[str, ...]) -> set[str]:
    """The distributions that ``pip install -e ".[extras]"`` asks for by name: the base
    dependencies and every named extra's, following the project's references to itself."""
    name = normalized(project()["name"])
    optional = project()["optional-dependencies"]
    found: set[str] = set()
    pending, seen = [None, *extras], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra is None or extra in optional, f"pyproject.toml has no extra {extra!r}"
        for line in project()["dependencies"] if extra is None else optional[extra]:
            match = REQUIREMENT.match(line)
            assert match, f"unreadable requirement {line!r}"
            if normalized(match[1]) == name:  # e.g. salsa-linesearch[harness,nlp]
                pending += [e.strip() for e in (match[2] or "").split(",") if e.strip()]
            else:
                found.add(normalized(match[1]))
    return found


def install_extras(script: Path) -> tuple[str, ...]:
    """The extras of the single install command in the script's docstring."""
    docstring = ast.get_docstring(ast.parse(script.read_text())) or ""
    commands = INSTALL.findall(docstring)
    assert len(commands) == 1, (
        f"examples/{script.name}: its docstring must name exactly one install command of the form "
        f'`pip install -e .` or `pip install -e ".[extra]"`, found {len(commands)}'
    )
    return tuple(e for e in commands[0].split(",") if e)


def first_party() -> set[str]:
    return {path.parent.name for path in ROOT.glob("*/__init__.py")}


def third_party_imports(script: Path) -> set[str]:
    """Top-level names of the modules the script imports, less the standard library and this
    project's own packages."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - first_party()


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_named_install_covers_every_import(script):
    wanted = requirements(install_extras(script))
    providers = importlib.metadata.packages_distributions()
    for module in sorted(third_party_imports(script)):
        distributions = {normalized(d) for d in providers.get(module, [])}
        assert distributions, f"examples/{script.name} imports {module!r}, which no installed distribution provides"
        assert distributions & wanted, (
            f"examples/{script.name} imports {module!r} (from {sorted(distributions)}), which "
            f"`pip install -e \".[{','.join(install_extras(script))}]\"` does not install: "
            f"add it to that extra of pyproject.toml"
        )


def test_requirements_follow_the_projects_references_to_itself():
    # dev names salsa-linesearch[harness,...]: the harness' own requirements come with it.
    assert {"hydra-core", "torch", "pytest"} <= requirements(("dev",))
    assert "hydra-core" not in requirements(("hf",))


def test_a_missing_requirement_is_caught(tmp_path):
    script = tmp_path / "uses_datasets.py"
    script.write_text('"""Needs datasets.\n\n    pip install -e ".[lightning]"\n"""\nimport datasets\nimport optim\n')
    assert third_party_imports(script) == {"datasets"}
    assert "datasets" not in requirements(install_extras(script))


# -- a missing extra is named by what needs it -------------------------------------------------

def test_each_module_is_installed_by_the_extra_named_for_it():
    from experiments.extras import EXTRAS

    providers = importlib.metadata.packages_distributions()
    for module, extra in EXTRAS.items():
        top = module.split(".")[0]
        # The namespace package hydra_plugins is shared: its launchers are named by their distribution.
        distributions = ({normalized(module.split(".")[1])} if top == "hydra_plugins" else {normalized(d) for d in providers.get(top, [])})
        assert distributions & requirements((extra,)), f"{module}: [{extra}] does not install {distributions}"


BLOCKED_RUN = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without(blocked: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN.format(blocked=blocked, argv=argv)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_main_without_the_harness_extra_says_which_extra_to_install(tmp_path):
    done = run_without(["hydra"], [str(ROOT / "main.py")], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == 'main.py needs hydra, not installed here: pip install -e ".[harness]"'
    assert not any(tmp_path.iterdir())


def test_a_launcher_without_its_plugin_is_named_in_a_dry_run(tmp_path):
    done = run_without(["hydra_plugins.hydra_joblib_launcher"],
                       [str(ROOT / "run_multiple.py"), "mini", "--launcher", "joblib", "--dry-run",
                        "--root", str(tmp_path)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("--launcher joblib needs hydra_plugins.hydra_joblib_launcher, not installed "
                                   'here: pip install -e ".[cluster]"')


@pytest.mark.parametrize("module, overrides, extra", [
    ("prodigyopt", ["optimizer=prodigy"], "lrfree"),
    ("datasets", ["dataset=sst2", "model=small_bert", "model.tokenizer=bert-offline"], "nlp"),
    ("torchvision", ["dataset=cifar10", "model=resnet34_cifar"], "vision"),
])
def test_a_choice_whose_extra_is_missing_names_it(tmp_path, module, overrides, extra):
    done = run_without([module], [str(ROOT / "main.py"), *overrides, "trainer.progress=false",
                                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(f'; {module} is in the [{extra}] extra: pip install -e ".[{extra}]" '
                                        f"(nothing written; {tmp_path / 'run'} was removed)")
