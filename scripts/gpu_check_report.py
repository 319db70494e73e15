"""The report of ``scripts/gpu_check.sh``: the CUDA tests' outcomes and the benchmark's numbers on
one GPU, as ``<out>/gpu_check_<device-slug>.json`` and ``.md``; among them the searches' fused path
(the Triton kernels) beside their foreach path, against fused AdamW.

Inputs are what the shell script collected: pytest's JUnit XML (or, when pytest was stopped
before writing it, its ``-v`` log), pytest's exit code, ``bench_optim_cuda.json`` as
``scripts/bench_optim.py`` writes it after every workload, and the benchmark's exit code. Prints
one summary line; exits 0 only when every test passed (none failed, errored or was left
unrun by a timeout) and every requested workload was measured. Needs nothing but the standard
library (no torch import), so it runs and is tested anywhere.

    python scripts/gpu_check_report.py --device-name "NVIDIA H100 80GB HBM3" --torch 2.14.1 \\
        --cuda 13.0 --pytest-xml work/pytest.xml --pytest-log work/pytest.log --pytest-rc 0 \\
        --bench-json outputs/gpu_check/bench_optim_cuda.json --bench-rc 0 \\
        --bench-workloads mlp,cnn,transformer,bert --seconds 300 --out outputs/gpu_check
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
# When one test reports several (a failed call and an error in teardown), the worst one counts.
_SEVERITY = {"failed": 5, "error": 4, "xpassed": 3, "xfailed": 2, "skipped": 1, "passed": 0}
_LOG_OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
                 "XFAIL": "xfailed", "XPASS": "xpassed"}
_VERBOSE_LINE = re.compile(r"^(?P<test>\S+::\S+) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_SUMMARY_FAILURE = re.compile(r"^(?P<outcome>FAILED|ERROR) (?P<test>\S+::\S+)(?: - (?P<message>.*))?$")
_FINAL_LINE = re.compile(
    r"^=+ (?P<text>.*\d+ (?:passed|failed|skipped|error|errors|xfailed|xpassed|deselected).*) =+$"
)
MESSAGE_CHARS = 400


@dataclass
class TestOutcome:
    test: str  # tests/optim/test_cuda_optim.py::test_name[param]
    outcome: str  # one of OUTCOMES
    message: str = ""  # the failure's first line, the skip or xfail reason
    seconds: float | None = None


def slug(device_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown-device"


def _short(text: str | None) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def _test_id(classname: str, name: str) -> str:
    """pytest's node id from JUnit's ``classname`` (``tests.test_x`` or ``tests.test_x.TestY``)."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("test"):
            module, classes = parts[:i], parts[i:]
            return "::".join(["/".join(module) + ".py", *classes, name])
    return f"{classname}::{name}"


def parse_junit(path: Path) -> list[TestOutcome]:
    """Every ``testcase`` of a pytest JUnit XML file with its outcome."""
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        found: list[tuple[str, str]] = []
        for child in case:
            if child.tag == "failure":
                found.append(("failed", child.get("message") or child.text or ""))
            elif child.tag == "error":
                found.append(("error", child.get("message") or child.text or ""))
            elif child.tag == "skipped":
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                found.append((kind, child.get("message") or child.text or ""))
        outcome, message = max(found, key=lambda f: _SEVERITY[f[0]]) if found else ("passed", "")
        time = case.get("time")
        outcomes.append(TestOutcome(_test_id(case.get("classname", ""), case.get("name", "")), outcome,
                                    _short(message), float(time) if time else None))
    return outcomes


def parse_pytest_log(text: str) -> list[TestOutcome]:
    """Outcomes from the per-test lines of ``pytest -v`` (the fallback when pytest was stopped
    before it wrote its XML), with the messages of the ``-rA`` summary when it got that far."""
    worst: dict[str, TestOutcome] = {}
    messages: dict[str, str] = {}
    for line in text.splitlines():
        if match := _VERBOSE_LINE.match(line):
            outcome = _LOG_OUTCOMES[match["outcome"]]
            test = match["test"]
            if test not in worst or _SEVERITY[outcome] > _SEVERITY[worst[test].outcome]:
                worst[test] = TestOutcome(test, outcome)
        elif match := _SUMMARY_FAILURE.match(line):
            messages[match["test"]] = _short(match["message"])
    for test, message in messages.items():
        if test in worst:
            worst[test].message = message
    return list(worst.values())


def pytest_final_line(text: str) -> str | None:
    """pytest's closing ``N passed, M failed in S s`` line, if it printed one."""
    lines = [m["text"] for line in text.splitlines() if (m := _FINAL_LINE.match(line.strip()))]
    return lines[-1] if lines else None


def count(outcomes: list[TestOutcome]) -> dict[str, int]:
    return {name: sum(o.outcome == name for o in outcomes) for name in OUTCOMES}


def pytest_section(xml: Path | None, log: Path | None, exit_code: int, timed_out: bool) -> dict[str, Any]:
    log_text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    if xml is not None and xml.exists() and xml.stat().st_size:
        outcomes, source = parse_junit(xml), "junit"
    elif log_text:
        outcomes, source = parse_pytest_log(log_text), "log"
    else:
        outcomes, source = [], None
    return {
        "exit_code": exit_code,
        "timed_out": timed_out,
        "source": source,
        "counts": count(outcomes),
        "final_line": pytest_final_line(log_text),
        "not_ok": [asdict(o) for o in outcomes if o.outcome in ("failed", "error", "xpassed")],
        "xfailed": [asdict(o) for o in outcomes if o.outcome == "xfailed"],
        "skipped": [asdict(o) for o in outcomes if o.outcome == "skipped"],
        "seconds": sum(o.seconds or 0.0 for o in outcomes),
    }


BENCH_KEYS = ("ms_per_step", "forwards_per_step", "trial_fwd_ms_per_step", "t_adam_ms", "excess_ms",
              "excess_pct", "memory_mb", "memory_x_params", "state_bytes_per_param", "final_loss")
FUSED, FOREACH = " (fused)", " (foreach)"  # how the benchmark names a search's two paths


def bench_section(path: Path | None, requested: list[str], exit_code: int, timed_out: bool) -> dict[str, Any]:
    """The numbers of ``bench_optim_cuda.json`` (one row per workload and optimizer, the excess
    measured from the benchmark's baseline, which its meta names); the workloads asked for but
    absent from the file were not measured (failure or timeout)."""
    data = json.loads(path.read_text()) if path is not None and path.exists() else {"meta": {}, "results": {}}
    baseline = data.get("meta", {}).get("baseline", "Adam")  # files written before it was named
    results = data.get("results", {})
    rows = []
    for workload, result in results.items():
        for optimizer, summary in result.get("summary", {}).items():
            row = {"workload": workload, "optimizer": optimizer, "parameters": result.get("parameters"),
                   **{key: summary.get(key) for key in BENCH_KEYS}}
            if optimizer == baseline:
                row["excess_ms"] = row["excess_pct"] = None  # the baseline itself
            rows.append(row)
    meta = data.get("meta", {})
    return {
        "exit_code": exit_code,
        "timed_out": timed_out,
        "workloads_requested": requested,
        "workloads_measured": list(results),
        "not_measured": [w for w in requested if w not in results],
        "steps": meta.get("steps"),
        "block": meta.get("block"),
        "date": meta.get("date"),
        "baseline": baseline,
        "searches": meta.get("searches", []),
        "fused_kernel": meta.get("fused_kernel"),
        "rows": rows,
        "salsa_vs_reference": {
            w: r["salsa_vs_reference"] for w, r in results.items() if r.get("salsa_vs_reference")
        },
    }


def build_report(device_name: str, torch_version: str, cuda_version: str, seconds: float,
                 pytest: dict[str, Any], bench: dict[str, Any], date: str | None = None) -> dict[str, Any]:
    counts = pytest["counts"]
    tests_ok = (pytest["exit_code"] == 0 and not pytest["timed_out"] and counts["passed"] > 0
                and not (counts["failed"] or counts["error"]))
    bench_ok = bench["exit_code"] == 0 and not bench["timed_out"] and not bench["not_measured"]
    return {
        "device": device_name,
        "device_slug": slug(device_name),
        "torch": torch_version,
        "cuda": cuda_version,
        "date": date or datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "ok": tests_ok and bench_ok,
        "tests_ok": tests_ok,
        "bench_ok": bench_ok,
        "pytest": pytest,
        "bench": bench,
    }


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|") or "-"


def markdown(report: dict[str, Any]) -> str:
    pytest, bench = report["pytest"], report["bench"]
    counts = pytest["counts"]
    verdict = "passed" if report["ok"] else "FAILED"
    lines = [
        f"# GPU check on {report['device']}",
        "",
        f"torch {report['torch']}, CUDA {report['cuda']}, {report['date']}, {report['seconds']:.0f} s "
        f"(`scripts/gpu_check.sh`). Result: **{verdict}**.",
        "",
        "## CUDA tests (`python -m pytest -m cuda`)",
        "",
        ", ".join(f"{counts[name]} {name}" for name in OUTCOMES)
        + f" (pytest exit code {pytest['exit_code']}"
        + (", stopped by its time limit" if pytest["timed_out"] else "")
        + (", outcomes read from its log" if pytest["source"] == "log" else "")
        + (", no outcomes found" if pytest["source"] is None else "") + ").",
    ]
    listed = (("Failed, errors, unexpected passes", "not_ok"), ("Expected failures (known bugs)", "xfailed"),
              ("Skipped", "skipped"))
    for title, key in listed:
        if pytest[key]:
            lines += ["", f"{title}:", "", "| test | outcome | message |", "| --- | --- | --- |"]
            lines += [f"| `{o['test']}` | {o['outcome']} | {_cell_text(o['message'])} |" for o in pytest[key]]
    lines += [
        "",
        "## Benchmark (`scripts/bench_optim.py --device cuda --workloads "
        f"{','.join(bench['workloads_requested'])}`"
        + (f", {bench['steps']} steps in blocks of {bench['block']}" if bench["steps"] else "") + ")",
        "",
    ]
    if bench["rows"]:
        lines += [
            f"Excess: step time beyond the optimizer's own trial forwards, minus {bench['baseline']}'s.",
            "",
            "| workload | optimizer | ms/step | forwards/step | trial fwd ms/step | excess ms "
            "| excess % of baseline | memory | state B/param |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in bench["rows"]:
            baseline = row["excess_ms"] is None
            lines.append(
                f"| {row['workload']} | {row['optimizer']} | {_cell(row['ms_per_step'], '.2f')} | "
                f"{_cell(row['forwards_per_step'], '.2f')} | {_cell(row['trial_fwd_ms_per_step'], '.2f')} | "
                f"{'baseline' if baseline else _cell(row['excess_ms'], '.2f')} | "
                f"{'baseline' if baseline else _cell(row['excess_pct'], '.1f') + '%'} | "
                f"{_cell(row['memory_mb'], '.1f')} MB ({_cell(row['memory_x_params'], '.2f')}x) | "
                f"{_cell(row.get('state_bytes_per_param'), '.1f')} |"
            )
        lines += fused_section(bench)
    else:
        lines.append("No workload was measured.")
    if bench["not_measured"]:
        why = ("was stopped by its time limit" if bench["timed_out"]
               else f"exited with code {bench['exit_code']}")
        lines += ["", f"Not measured: {', '.join(bench['not_measured'])} (the benchmark {why})."]
    elif bench["exit_code"] != 0:
        lines += ["", f"The benchmark exited with code {bench['exit_code']}."]
    return "\n".join(lines) + "\n"


def fused_section(bench: dict[str, Any]) -> list[str]:
    """The searches' fused path beside their foreach path, both against the baseline (fused
    AdamW in ``gpu_check.sh``): excess in % of its step and optimizer state per parameter."""
    rows = {(r["workload"], r["optimizer"]): r for r in bench["rows"]}
    pairs = [(w, search) for w in bench["workloads_measured"] for search in bench["searches"]
             if (w, search + FUSED) in rows]
    kernel = bench.get("fused_kernel") or {}
    if not pairs:
        why = f" ({kernel['reason']})" if kernel.get("reason") else ""
        return ["", f"The fused path was not measured{why}."]
    lines = [
        "", f"## Fused path against {bench['baseline']}", "",
        "| workload | search | fused: excess % | foreach: excess % | fused: state B/param | foreach: state B/param |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, search in pairs:
        fused, foreach = rows[workload, search + FUSED], rows.get((workload, search + FOREACH), {})
        lines.append(
            f"| {workload} | {search} | {_cell(fused['excess_pct'], '.1f')} | {_cell(foreach.get('excess_pct'), '.1f')} | "
            f"{_cell(fused.get('state_bytes_per_param'), '.1f')} | {_cell(foreach.get('state_bytes_per_param'), '.1f')} |"
        )
    return lines


def summary_line(report: dict[str, Any], md_path: Path) -> str:
    counts = report["pytest"]["counts"]
    bench = report["bench"]
    tests = ", ".join(f"{counts[name]} {name}" for name in OUTCOMES if counts[name]) or "no test outcomes"
    if report["pytest"]["timed_out"]:
        tests += " (stopped by the time limit)"
    measured = f"{len(bench['workloads_measured'])}/{len(bench['workloads_requested'])} workloads"
    if bench["timed_out"]:
        measured += " (stopped by the time limit)"
    return f"gpu_check: {'passed' if report['ok'] else 'FAILED'} on {report['device']}: tests {tests}; " \
           f"benchmark {measured}; report {md_path}"


def write(report: dict[str, Any], out: Path, logs: dict[str, Path | None] | None = None) -> tuple[Path, Path]:
    """``gpu_check_<slug>.json`` and ``.md`` under ``out``, and each log of ``logs`` (name ->
    file) next to them as ``gpu_check_<slug>.<name>.log``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_check_{report['device_slug']}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    for name, log in (logs or {}).items():
        if log is not None and log.exists():
            (out / f"{stem}.{name}.log").write_text(log.read_text(errors="replace"))
    return json_path, md_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--torch", default="?")
    parser.add_argument("--cuda", default="?")
    parser.add_argument("--pytest-xml", type=Path)
    parser.add_argument("--pytest-log", type=Path)
    parser.add_argument("--pytest-rc", type=int, required=True)
    parser.add_argument("--pytest-timed-out", action="store_true")
    parser.add_argument("--bench-json", type=Path)
    parser.add_argument("--bench-log", type=Path)
    parser.add_argument("--bench-rc", type=int, required=True)
    parser.add_argument("--bench-timed-out", action="store_true")
    parser.add_argument("--bench-workloads", default="mlp,cnn,transformer,bert")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pytest = pytest_section(args.pytest_xml, args.pytest_log, args.pytest_rc, args.pytest_timed_out)
    workloads = args.bench_workloads.split(",")
    bench = bench_section(args.bench_json, workloads, args.bench_rc, args.bench_timed_out)
    report = build_report(args.device_name, args.torch, args.cuda, args.seconds, pytest, bench)
    _, md_path = write(report, args.out, {"pytest": args.pytest_log, "bench": args.bench_log})
    print(summary_line(report, md_path))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
