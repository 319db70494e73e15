"""scripts/gpu_check.sh and its report writer, where no GPU is needed: the script refuses cleanly
without a CUDA device, and the report is right for known pytest and benchmark outputs (pytest's
own JUnit XML and ``-v`` log of a fixture test file, the benchmark's own JSON writer).

Not marked ``cuda``: these run in the default suite, on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_optim  # noqa: E402
import gpu_check_report as report  # noqa: E402

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "out"), **env},
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the script would run the check")
def test_without_cuda_the_script_refuses_in_one_line_and_runs_nothing(tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("gpu_check: no CUDA device (torch.cuda.is_available() is False; torch ")
    assert line.endswith("; nothing was run")
    assert not (tmp_path / "out").exists()


def test_the_script_refuses_when_torch_does_not_import(tmp_path):
    (tmp_path / "torch.py").write_text('raise ImportError("broken install")\n')
    result = run_script(tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gpu_check: cannot import torch with {sys.executable} (ImportError: broken install); nothing was run"
    ]


def test_device_slug():
    assert report.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert report.slug("NVIDIA A100-SXM4-40GB") == "nvidia-a100-sxm4-40gb"
    assert report.slug("  ") == "unknown-device"


# -- pytest's outputs -------------------------------------------------------------------------------

FIXTURE_TESTS = '''
import pytest

def test_pass():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n

def test_fail():
    assert 1 == 2, "one is not two"

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_error(broken):
    pass

def test_skip():
    pytest.skip("no device here")

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    raise RuntimeError("the bug")

@pytest.mark.xfail(strict=True, reason="fixed meanwhile")
def test_fixed_bug():
    pass
'''
EXPECTED = {
    "test_fixture.py::test_pass": "passed",
    "test_fixture.py::test_param[1]": "passed",
    "test_fixture.py::test_param[2]": "passed",
    "test_fixture.py::test_fail": "failed",
    "test_fixture.py::test_error": "error",
    "test_fixture.py::test_skip": "skipped",
    "test_fixture.py::test_known_bug": "xfailed",
    "test_fixture.py::test_fixed_bug": "failed",  # XPASS(strict) fails the run
}


def run_pytest(folder: Path, name: str, source: str) -> tuple[Path, Path, int]:
    """pytest run on the test file ``name`` (``source``) as gpu_check.sh runs it (``-v -rA``,
    JUnit XML), with settings of its own, not this repository's: its XML, its log, its code."""
    (folder / name).write_text(textwrap.dedent(source))
    (folder / "pytest.ini").write_text("[pytest]\n")
    xml, log = folder / "pytest.xml", folder / "pytest.log"
    command = [sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}",
               name]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    log.write_text(result.stdout + result.stderr)
    return xml, log, result.returncode


@pytest.fixture(scope="module")
def pytest_outputs(tmp_path_factory) -> tuple[Path, Path, int]:
    return run_pytest(tmp_path_factory.mktemp("fixture_run"), "test_fixture.py", FIXTURE_TESTS)


def test_junit_xml_of_a_real_run_gives_every_outcome(pytest_outputs):
    xml, _, returncode = pytest_outputs
    assert returncode == 1
    outcomes = {o.test: o for o in report.parse_junit(xml)}
    assert {test: o.outcome for test, o in outcomes.items()} == EXPECTED
    assert "one is not two" in outcomes["test_fixture.py::test_fail"].message
    assert "fixture broke" in outcomes["test_fixture.py::test_error"].message
    assert "no device here" in outcomes["test_fixture.py::test_skip"].message
    assert "a known bug" in outcomes["test_fixture.py::test_known_bug"].message
    assert all(o.seconds is not None and o.seconds >= 0 for o in outcomes.values())


def test_the_verbose_log_alone_gives_the_same_outcomes(pytest_outputs):
    """What the report falls back on when pytest was stopped before writing its XML."""
    _, log, _ = pytest_outputs
    outcomes = {o.test: o for o in report.parse_pytest_log(log.read_text())}
    assert {test: o.outcome for test, o in outcomes.items()} == EXPECTED
    assert "one is not two" in outcomes["test_fixture.py::test_fail"].message
    final = report.pytest_final_line(log.read_text())
    assert final.startswith("2 failed, 3 passed, 1 skipped, 1 xfailed, 1 error")


def test_a_log_cut_short_counts_what_ran(tmp_path):
    log = textwrap.dedent("""\
        tests/optim/test_cuda_optim.py::test_a[x] PASSED                               [  1%]
        tests/optim/test_cuda_optim.py::test_b PASSED                                  [  2%]
        tests/optim/test_cuda_optim.py::test_b ERROR                                   [  2%]
        tests/optim/test_cuda_optim.py::test_c FAILED                                  [  3%]
        tests/optim/test_cuda_optim.py::test_d SKIPPED (dry run on CPU: NCCL needs...) [  4%]
        tests/optim/test_cuda_optim.py::test_e XFAIL (a known bug)                     [  5%]
    """)
    (tmp_path / "pytest.log").write_text(log)
    section = report.pytest_section(tmp_path / "missing.xml", tmp_path / "pytest.log", 124, timed_out=True)
    assert section["source"] == "log" and section["final_line"] is None
    assert section["counts"] == {
        "passed": 1, "failed": 1, "error": 1, "skipped": 1, "xfailed": 1, "xpassed": 0}
    assert [o["test"] for o in section["not_ok"]] == [
        "tests/optim/test_cuda_optim.py::test_b", "tests/optim/test_cuda_optim.py::test_c"]


# -- the benchmark's output and the whole report --------------------------------------------------


def _summary(ms: float, excess_ms: float | None, forwards: float, memory_mb: float, x_params: float) -> dict:
    return {"ms_per_step": ms, "forwards_per_step": forwards, "trial_fwd_ms_per_step": ms / 4,
            "t_adam_ms": 2.0, "excess_ms": excess_ms or 0.0, "excess_pct": 100 * (excess_ms or 0.0) / 2.0,
            "memory_mb": memory_mb, "memory_x_params": x_params, "state_bytes_per_param": 4 * x_params,
            "final_loss": 1.25}


def _bench_json(folder: Path, workloads: list[str]) -> Path:
    """``bench_optim_cuda.json`` as ``scripts/bench_optim.py`` writes it (its own writer)."""
    meta = {"torch": "2.14.1", "device": "cuda", "device_name": "Fake GPU", "threads": 16, "steps": 120,
            "block": 20, "date": "2026-12-06T00:00:00+00:00", "load_average": [0.1, 0.1, 0.1],
            "load_average_end": [0.2, 0.2, 0.2], "allocator": {}}
    summary = {"Adam": _summary(2.0, None, 1.0, 14.2, 2.0), "SaLSA": _summary(3.1, 0.08, 1.95, 21.3, 3.0)}
    results = {
        name: {"parameters": 1000, "param_bytes": 4000, "blocks": [], "salsa_vs_reference": None,
               "summary": summary}
        for name in workloads
    }
    bench_optim.write_report(folder, meta, results)
    return folder / "bench_optim_cuda.json"


def _args(
    tmp_path: Path, xml: Path, log: Path, pytest_rc: int, bench: Path, bench_rc: int, *flags: str
) -> list[str]:
    return ["--device-name", "Fake GPU 80GB", "--torch", "2.14.1", "--cuda", "13.0", "--pytest-xml", str(xml),
            "--pytest-log", str(log), "--pytest-rc", str(pytest_rc), "--bench-json", str(bench),
            "--bench-rc", str(bench_rc), "--bench-workloads", "mlp,cnn,bert", "--seconds", "301.4",
            "--out", str(tmp_path / "out"), *flags]


def test_report_of_a_failing_check_names_failures_and_what_was_not_measured(tmp_path, pytest_outputs, capsys):
    xml, log, returncode = pytest_outputs
    bench = _bench_json(tmp_path / "bench", ["mlp", "cnn"])  # bert stopped by the time limit
    assert report.main(_args(tmp_path, xml, log, returncode, bench, 124, "--bench-timed-out")) == 1
    md_path = tmp_path / "out" / "gpu_check_fake-gpu-80gb.md"
    assert capsys.readouterr().out.strip() == (
        "gpu_check: FAILED on Fake GPU 80GB: tests 3 passed, 2 failed, 1 error, 1 skipped, 1 xfailed; "
        f"benchmark 2/3 workloads (stopped by the time limit); report {md_path}"
    )
    data = json.loads((tmp_path / "out" / "gpu_check_fake-gpu-80gb.json").read_text())
    assert (data["ok"], data["tests_ok"], data["bench_ok"]) == (False, False, False)
    assert data["device"] == "Fake GPU 80GB" and data["seconds"] == 301.4
    counts = {"passed": 3, "failed": 2, "error": 1, "skipped": 1, "xfailed": 1, "xpassed": 0}
    assert data["pytest"]["counts"] == counts
    assert sorted(o["test"] for o in data["pytest"]["not_ok"]) == [
        "test_fixture.py::test_error", "test_fixture.py::test_fail", "test_fixture.py::test_fixed_bug"]
    bench_data = data["bench"]
    assert bench_data["not_measured"] == ["bert"] and bench_data["timed_out"] and bench_data["steps"] == 120
    rows = {(r["workload"], r["optimizer"]): r for r in bench_data["rows"]}
    assert set(rows) == {("mlp", "Adam"), ("mlp", "SaLSA"), ("cnn", "Adam"), ("cnn", "SaLSA")}
    assert rows["mlp", "Adam"]["excess_ms"] is None  # the baseline
    assert rows["mlp", "SaLSA"]["excess_ms"] == 0.08 and rows["mlp", "SaLSA"]["forwards_per_step"] == 1.95
    md = md_path.read_text()
    assert "Result: **FAILED**" in md
    assert "| mlp | SaLSA | 3.10 | 1.95 | 0.78 | 0.08 | 4.0% | 21.3 MB (3.00x) | 12.0 |" in md
    assert "| mlp | Adam | 2.00 | 1.00 | 0.50 | baseline | baseline | 14.2 MB (2.00x) | 8.0 |" in md
    assert "| `test_fixture.py::test_fail` | failed |" in md
    assert "| `test_fixture.py::test_known_bug` | xfailed | " in md
    assert "Not measured: bert (the benchmark was stopped by its time limit)." in md
    # The logs are kept beside the report.
    assert (tmp_path / "out" / "gpu_check_fake-gpu-80gb.pytest.log").read_text() == log.read_text()


def test_report_of_a_passing_check(tmp_path):
    xml, log, returncode = run_pytest(tmp_path, "test_ok.py", "def test_ok():\n    pass\n")
    bench = _bench_json(tmp_path / "bench", ["mlp", "cnn", "bert"])
    assert report.main(_args(tmp_path, xml, log, returncode, bench, 0)) == 0
    data = json.loads((tmp_path / "out" / "gpu_check_fake-gpu-80gb.json").read_text())
    assert data["ok"] and data["pytest"]["counts"]["passed"] == 1 and data["bench"]["not_measured"] == []
    assert "Result: **passed**" in (tmp_path / "out" / "gpu_check_fake-gpu-80gb.md").read_text()


def test_a_run_in_which_every_test_was_skipped_is_not_a_pass(tmp_path):
    """On a GPU machine nothing may skip for want of a device: no test passed, no pass."""
    source = "import pytest\n\ndef test_s():\n    pytest.skip('no CUDA device')\n"
    xml, log, returncode = run_pytest(tmp_path, "test_skip.py", source)
    assert returncode == 0
    bench = _bench_json(tmp_path / "bench", ["mlp", "cnn", "bert"])
    assert report.main(_args(tmp_path, xml, log, 0, bench, 0)) == 1
    assert not json.loads((tmp_path / "out" / "gpu_check_fake-gpu-80gb.json").read_text())["tests_ok"]


def test_the_report_sets_the_fused_path_beside_the_foreach_path_against_fused_adamw(tmp_path):
    meta = {"torch": "2.14.1", "device": "cuda", "device_name": "Fake GPU", "threads": 16, "steps": 120,
            "block": 20, "date": "2026-12-06T00:00:00+00:00", "load_average": [0.1, 0.1, 0.1],
            "load_average_end": [0.2, 0.2, 0.2], "allocator": {}, "baseline": "AdamW (fused)",
            "searches": ["SaLSA", "adamsls"], "fused_kernel": {"available": True, "reason": None}}
    summary = {"AdamW (fused)": _summary(2.0, None, 1.0, 14.2, 2.0),
               "SaLSA (fused)": _summary(2.1, 0.04, 1.95, 14.2, 2.0),
               "SaLSA (foreach)": _summary(2.6, 0.5, 1.95, 21.3, 3.0)}
    results = {"mlp": {"parameters": 1000, "param_bytes": 4000, "blocks": [], "salsa_vs_reference": None,
                       "summary": summary}}
    bench_optim.write_report(tmp_path, meta, results)
    section = report.bench_section(tmp_path / "bench_optim_cuda.json", ["mlp"], 0, timed_out=False)
    assert section["baseline"] == "AdamW (fused)"
    md = "\n".join(report.fused_section(section))
    assert "## Fused path against AdamW (fused)" in md
    assert "| mlp | SaLSA | 2.0 | 25.0 | 8.0 | 12.0 |" in md  # excess %, state bytes per parameter

    del summary["SaLSA (fused)"]
    meta["fused_kernel"] = {"available": False, "reason": "No module named 'triton'"}
    bench_optim.write_report(tmp_path, meta, results)
    section = report.bench_section(tmp_path / "bench_optim_cuda.json", ["mlp"], 0, timed_out=False)
    assert report.fused_section(section)[-1] == "The fused path was not measured (No module named 'triton')."
