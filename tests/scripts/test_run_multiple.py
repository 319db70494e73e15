"""run_multiple.py: the grids' sizes, the skip/resume/restart rule, the launchers' overrides, the
presets' optimizer settings, and a real sweep in which one run fails and the others finish."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import run_multiple
from experiments import sweep_supervisor
from experiments.grid import EXTRA_COLUMNS, PAPER_COLUMNS
from experiments.paths import MAIN, REPO
from experiments.sweep_plan import State, classify

from sweep_utils import commands, compose, dry_run, job_overrides

COUNT_LINE = re.compile(r"^(\w+): (\d+) runs \((\d+) tasks x (\d+) columns x (\d+) seeds\)", re.M)
RUN_LINE = re.compile(r"^  (skip|diverged|resume|restart|fresh) +(\S+)", re.M)


def counts(out: str) -> dict[str, tuple[int, ...]]:
    return {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in COUNT_LINE.finditer(out)}


@pytest.mark.parametrize("argv, expected", [
    (["nlp"], {"nlp": (120, 4, 6, 5)}),
    (["image"], {"image": (54, 3, 6, 3)}),
    (["gpt2"], {"gpt2": (6, 1, 6, 1)}),
    (["mini"], {"mini": (99, 3, 11, 3)}),
    (["nlp", "--extra"], {"nlp": (220, 4, 11, 5)}),
    (["nlp", "--seeds", "2"], {"nlp": (48, 4, 6, 2)}),
    (["mini", "--extra", "--seeds", "1"], {"mini": (33, 3, 11, 1)}),  # mini has every column already
    (["all"], {"nlp": (120, 4, 6, 5), "image": (54, 3, 6, 3), "gpt2": (6, 1, 6, 1)}),
    (["all", "--tasks", "sst2,cifar100", "--columns", "salsa"], {"nlp": (5, 1, 1, 5), "image": (3, 1, 1, 3)}),
])
def test_dry_run_counts(capsys, tmp_path, argv, expected):
    out = dry_run(capsys, *argv, "--root", str(tmp_path))
    assert counts(out) == expected
    runs = RUN_LINE.findall(out)
    assert len(runs) == sum(n for n, *_ in expected.values())
    assert len({name for _, name in runs}) == len(runs)  # every run has a directory of its own
    assert {state for state, _ in runs} == {"fresh"}
    assert not any(tmp_path.iterdir())  # a dry run creates nothing


@pytest.mark.parametrize("what", ["a dry run", "the record layer"])
def test_planning_and_the_record_import_no_torch(tmp_path, what):
    """A dry run plans from the runs' records alone, and the record layer names its errors
    without the trainer: neither imports torch (``python -X importtime``, in a fresh process)."""
    argv = {"a dry run": ["run_multiple.py", "nlp", "--dry-run", "--root", str(tmp_path)],
            "the record layer": ["-c", "import experiments.record, experiments.errors, experiments.grid"],
            }[what]
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported  # importtime reported
    assert [line for line in imported if " torch" in line] == []


def test_nlp_grid_is_the_paper_table(capsys, tmp_path):
    out = dry_run(capsys, "nlp", "--root", str(tmp_path))
    names = {name for _, name in RUN_LINE.findall(out)}
    columns = ["adam", "sgd", "sls_adam", "sls", "salsa", "salsa_sgd"]
    assert names == {f"{task}-bert-{opt}-seed{seed}" for task in ("mnli", "qnli", "mrpc", "sst2")
                     for opt in columns for seed in range(5)}


def _summary(run_dir: Path, status: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))


def _checkpoint(run_dir: Path, step: int) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / f"step_{step:09d}.pt").write_bytes(b"")


def test_classify_hand_made_run_dirs(tmp_path):
    cases = {}
    for status in ("failed", "interrupted", "running"):
        cases[f"ckpt-{status}"] = State.resume
        _summary(tmp_path / f"ckpt-{status}", status)
        _checkpoint(tmp_path / f"ckpt-{status}", 40)
        cases[f"record-{status}"] = State.restart
        _summary(tmp_path / f"record-{status}", status)
    _summary(tmp_path / "finished", "finished")
    _checkpoint(tmp_path / "finished", 100)
    cases["finished"] = State.skip
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "summary.json").write_text('{"status": "runn')
    cases["torn"] = State.restart
    (tmp_path / "empty").mkdir()
    cases["empty"] = State.fresh
    (tmp_path / "config-error" / ".hydra").mkdir(parents=True)  # Hydra made it, the run never wrote a record
    (tmp_path / "config-error" / "run.log").write_text("error: trainer.batch_size must be positive\n")
    cases["config-error"] = State.fresh
    cases["missing"] = State.fresh
    assert {name: classify(tmp_path / name) for name in cases} == cases


def test_dry_run_skips_finished_and_resumes_the_others(capsys, tmp_path):
    grid = tmp_path / "mini"
    _summary(grid / "digits-small_cnn-adam-seed0", "finished")
    _summary(grid / "digits-small_cnn-adam-seed1", "interrupted")
    _checkpoint(grid / "digits-small_cnn-adam-seed1", 200)
    _summary(grid / "digits-small_cnn-sgd-seed0", "failed")
    (grid / "digits-small_cnn-sgd-seed1").mkdir()
    out = dry_run(capsys, "mini", "--tasks", "digits", "--columns", "adam,sgd", "--seeds", "2",
                  "--root", str(tmp_path))
    assert {name: state for state, name in RUN_LINE.findall(out)} == {
        "digits-small_cnn-adam-seed0": "skip", "digits-small_cnn-adam-seed1": "resume",
        "digits-small_cnn-sgd-seed0": "restart", "digits-small_cnn-sgd-seed1": "fresh",
    }
    assert "mini: 3 to run (1 fresh, 1 resume, 1 restart), 1 finished (skipped)" in out
    by_run = {(arg(cmd, "optimizer"), arg(cmd, "seed")): cmd for cmd in commands(out)}
    assert set(by_run) == {("adam", "1"), ("sgd", "0"), ("sgd", "1")}  # the finished run is not launched
    assert "trainer.resume=true" in by_run["adam", "1"]
    assert "trainer.resume=true" in by_run["sgd", "0"]  # a record without a checkpoint: start over
    assert "trainer.resume=true" not in by_run["sgd", "1"]


def arg(cmd: list[str], key: str) -> str | None:
    values = [a.split("=", 1)[1] for a in cmd if a.split("=", 1)[0] == key]
    return values[-1] if values else None


def test_multirun_launchers_sweep_only_what_is_left(capsys, tmp_path):
    grid = tmp_path / "image"
    _summary(grid / "cifar10-resnet34_cifar-l4_adam-seed1", "finished")
    out = dry_run(capsys, "image", "--tasks", "cifar10", "--extra", "--launcher", "joblib", "--n-jobs", "3",
                  "--root", str(tmp_path), "data_dir=/data")
    launched = set()
    for cmd in commands(out):
        assert cmd[1:3] == [str(MAIN), "-m"]
        assert arg(cmd, "hydra/launcher") == "joblib" and arg(cmd, "hydra.launcher.n_jobs") == "3"
        assert arg(cmd, "hydra.sweep.dir") == str(grid)
        assert arg(cmd, "trainer.progress") == "false" and arg(cmd, "data_dir") == "/data"
        optimizers, seeds = arg(cmd, "optimizer").split(","), arg(cmd, "seed").split(",")
        launched |= {(o, int(s)) for o in optimizers for s in seeds}
    columns = PAPER_COLUMNS + EXTRA_COLUMNS
    assert launched == {(o, s) for o in columns for s in range(3)} - {("l4_adam", 1)}
    # One multirun for the columns that need every seed, one for l4_adam's two: the image settings
    # come with the experiment, so they split nothing.
    assert len(commands(out)) == 2


def test_slurm_commands(capsys, tmp_path):
    out = dry_run(capsys, "nlp", "--launcher", "submitit_slurm", "--root", str(tmp_path),
                  "hydra.launcher.partition=gpu")
    cmds = commands(out)
    # One multirun per GLUE task, all six columns (their NLP settings come with the experiment).
    assert len(cmds) == 4
    assert [arg(cmd, "optimizer") for cmd in cmds] == ["adam,sgd,sls_adam,sls,salsa,salsa_sgd"] * 4
    for cmd in cmds:
        assert arg(cmd, "hydra/launcher") == "slurm"  # conf/hydra/launcher/slurm.yaml
        assert arg(cmd, "hydra.launcher.partition") == "gpu"
        assert arg(cmd, "seed") == "0,1,2,3,4"
        assert arg(cmd, "trainer.resume") == "true"  # a requeued job continues its own record


def test_local_launcher_is_one_process_per_run(capsys, tmp_path):
    out = dry_run(capsys, "gpt2", "--root", str(tmp_path))
    cmds = commands(out)
    assert len(cmds) == 6
    assert all(arg(c, "hydra/launcher") is None and "," not in arg(c, "optimizer") for c in cmds)
    logs = [line.split("log: ")[1] for line in out.splitlines() if line.startswith("    log: ")]
    assert logs[0] == str(tmp_path / "gpt2" / "openwebtext-gpt2-adam-seed0" / "run.log")


@pytest.mark.parametrize("grid, task, optimizer, expected", [
    # docs/protocol.md: NLP baselines Adam 2e-5 / SGD 2e-3 with cosine + 10 % warm-up, line searches speed-up on
    ("nlp", "mrpc", "adam", {"lr": 2e-5, "schedule": True, "batch_size": 32, "epochs": 5, "shuffle": False}),
    ("nlp", "mnli", "salsa", {"speed_up": True, "schedule": False}),
    # images: Adam 1e-3, SGD 0.1, flat; line searches speed-up off; batch 128
    ("image", "cifar100", "adam", {"lr": 1e-3, "schedule": False, "batch_size": 128}),
    ("image", "imagenet", "sgd", {"lr": 0.1, "momentum": 0.0, "schedule": False, "max_steps": 60000}),
    ("image", "cifar10", "sls", {"speed_up": False}),
    ("image", "cifar10", "salsa_sgd", {"speed_up": False}),
    ("image", "cifar10", "prodigy", {"lr": 1.0}),  # the extra columns keep their documented defaults
    ("gpt2", "openwebtext", "adam",
     {"lr": 6e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "max_grad_norm": 1.0, "batch_size": 12}),
    ("mini", "digits", "adam", {"lr": 1e-3, "schedule": False, "max_steps": 500}),
    ("mini", "digits", "sgd", {"lr": 0.1, "schedule": False}),
    ("mini", "rotten_tomatoes", "sgd", {"lr": 0.1, "max_steps": 150}),
    ("mini", "rotten_tomatoes_lm", "salsa", {"batch_size": 32, "max_steps": 150, "speed_up": True}),
])
def test_commands_compose_to_the_paper_settings(capsys, tmp_path, grid, task, optimizer, expected):
    out = dry_run(capsys, grid, "--tasks", task, "--columns", optimizer, "--seeds", "1",
                  "--root", str(tmp_path))
    (cmd,) = commands(out)
    cfg = compose(job_overrides(cmd))
    assert (cfg.dataset.name, cfg.optimizer.name, cfg.seed) == (task, optimizer, 0)
    found = {**OmegaConf.to_container(cfg.optimizer.build), **OmegaConf.to_container(cfg.trainer),
             "schedule": cfg.optimizer.schedule is not None}
    assert {key: found[key] for key in expected} == expected


@pytest.mark.parametrize("preset, optimizer, expected", [
    # The image runs had the speed-up rule off and flat baselines (docs/protocol.md, "Images").
    ("paper/cifar_resnet34", "salsa", {"speed_up": False}),
    ("paper/imagenet_resnet50", "sls_adam", {"speed_up": False}),
    ("paper/cifar_resnet34", "sgd", {"lr": 0.1, "momentum": 0.0, "schedule": False}),
    # GLUE: the baselines' cosine schedules; ADAM-SaLSa keeps its speed-up rule.
    ("paper/glue_bert", "adam", {"lr": 2e-5, "schedule": True}),
    ("paper/glue_bert", "salsa", {"speed_up": True}),
    # GPT-2: the fork's AdamW pipeline (train_old.py: 12 x 40, float16) over the experiment's trainer.
    ("paper/gpt2_openwebtext", "adam", {"lr": 6e-4, "batch_size": 12, "accumulation_steps": 40,
                                        "precision": "fp16", "max_grad_norm": 1.0}),
    ("paper/gpt2_openwebtext", "salsa", {"batch_size": 18, "accumulation_steps": 28, "precision": "fp32"}),
    ("mini/digits_cnn", "adam", {"lr": 1e-3, "schedule": False}),
])
def test_the_experiment_and_the_optimizer_alone_give_the_paper_run(preset, optimizer, expected):
    """What the README's `main.py +experiment=<preset> optimizer=<column>` composes, with no
    second override: the task group's settings of that column."""
    cfg = compose([f"+experiment={preset}", f"optimizer={optimizer}"])
    found = {**OmegaConf.to_container(cfg.optimizer.build), **OmegaConf.to_container(cfg.trainer, enum_to_str=True),
             "schedule": cfg.optimizer.schedule is not None}
    assert {key: found[key] for key in expected} == expected


def test_an_explicit_override_still_wins_over_the_task_groups_settings():
    cfg = compose(["+experiment=paper/cifar_resnet34", "optimizer=salsa", "optimizer.build.speed_up=true"])
    assert cfg.optimizer.build.speed_up is True
    assert compose(["optimizer=salsa"]).optimizer.build.speed_up is True  # no experiment: the config's own


def test_a_failing_run_is_isolated_and_reported(capsys, tmp_path):
    # batch_size=${seed}: seed 0 gets batch size 0, a config error; seed 1 trains for 5 steps.
    argv = ["mini", "--tasks", "digits", "--columns", "adam", "--seeds", "2", "--root", str(tmp_path),
            "trainer.max_steps=5", "trainer.batch_size=${seed}"]
    assert run_multiple.main(argv) == 1
    out = capsys.readouterr().out
    grid = tmp_path / "mini"
    bad, good = grid / "digits-small_cnn-adam-seed0", grid / "digits-small_cnn-adam-seed1"
    assert json.loads((good / "summary.json").read_text())["status"] == "finished"
    assert json.loads((good / "summary.json").read_text())["steps"] == 5
    assert not (bad / "summary.json").exists()
    assert "trainer.batch_size must be positive" in (bad / "run.log").read_text()
    failures = out.split("did not finish")[1]
    # The reason is the run's refusal note, not a line of its log.
    assert f"{bad.name}: no record: refused: trainer.batch_size must be positive, got 0" in failures
    assert f"log: {bad / 'run.log'}" in failures
    assert good.name not in failures
    # Re-running the grid skips the finished run and tries the failed one again.
    out = dry_run(capsys, *argv)
    states = {name: state for state, name in RUN_LINE.findall(out)}
    assert states == {bad.name: "fresh", good.name: "skip"}


def test_a_run_that_diverged_is_skipped_by_the_next_sweep_unless_retried(capsys, tmp_path):
    """SGD at lr 1e30 diverges (3 non-finite steps in a row) every time: the sweep records it as
    diverged, the next one skips it, --retry-diverged resumes it; a run that failed otherwise is
    tried again as before."""
    argv = ["mini", "--tasks", "digits", "--columns", "sgd", "--seeds", "2", "--root", str(tmp_path),
            "trainer.max_steps=30", "trainer.max_bad_steps=3", "trainer.batch_size=${seed}",
            "optimizer.build.lr=1e30"]
    assert run_multiple.main(argv) == 1  # seed 0: batch size 0, a config error; seed 1 diverges
    grid = tmp_path / "mini"
    diverged, refused = grid / "digits-small_cnn-sgd-seed1", grid / "digits-small_cnn-sgd-seed0"
    record = json.loads((diverged / "summary.json").read_text())
    assert record["status"] == "failed" and record["diverged"] is True
    assert "consecutive steps" in record["error"]
    out = capsys.readouterr().out
    assert "skips those that diverged unless --retry-diverged" in out
    out = dry_run(capsys, *argv)
    assert {name: state for state, name in RUN_LINE.findall(out)} == {diverged.name: "diverged", refused.name: "fresh"}
    assert "mini: 1 to run (1 fresh, 0 resume, 0 restart), 0 finished (skipped), 1 diverged (skipped)" in out
    assert [arg(cmd, "seed") for cmd in commands(out)] == ["0"]
    out = dry_run(capsys, *argv, "--retry-diverged")
    assert {name: state for state, name in RUN_LINE.findall(out)} == {diverged.name: "restart", refused.name: "fresh"}


def test_a_stopped_joblib_multirun_is_finished_run_by_run(capsys, tmp_path, monkeypatch):
    """main.py's sys.exit on a failed run ends a joblib multirun: the runs it left without an
    outcome run again one by one; the failed one is reported, and nothing finished runs twice."""
    bad = "digits-small_cnn-sgd-seed1"  # fails before writing a record, in any multirun

    def fake_command(multirun, grid_dir, options):
        # Each "multirun" finishes its runs in order and exits 2 at the bad one, like main.py.
        dirs = [str(run.run_dir) for run in multirun.runs]
        script = (
            "import json, pathlib, sys\n"
            f"for d in {dirs!r}:\n"
            f"    if d.endswith({bad!r}): print('error: bad run'); sys.exit(2)\n"
            "    p = pathlib.Path(d); p.mkdir(parents=True, exist_ok=True)\n"
            "    (p / 'summary.json').write_text(json.dumps({'status': 'finished'}))\n"
            "    (p / 'attempts').open('a').write('x')\n"
        )
        return [sys.executable, "-c", script]

    monkeypatch.setattr(sweep_supervisor, "command", fake_command)
    argv = ["mini", "--tasks", "digits", "--columns", "l4_adam,sgd,l4_mom", "--seeds", "3",
            "--launcher", "joblib", "--root", str(tmp_path)]
    assert run_multiple.main(argv) == 1
    out = capsys.readouterr().out
    grid = tmp_path / "mini"
    finished = {p.parent.name for p in grid.glob("*/summary.json")}
    everything = {f"digits-small_cnn-{o}-seed{s}" for o in ("l4_adam", "sgd", "l4_mom") for s in range(3)}
    assert finished == everything - {bad}
    assert all((grid / name / "attempts").read_text() == "x" for name in finished)  # each ran once
    # One multirun for the three columns (l4_adam, sgd, l4_mom x seeds 0-2): it stops at sgd seed 1,
    # leaving that run, sgd seed 2 and l4_mom's three without an outcome.
    assert "running its 5 runs without an outcome one by one" in out
    failures = out.split("did not finish")[1]
    assert f"{bad}: no record: it wrote nothing (see its log)" in failures  # and left no note
    assert f"log: {grid / bad / 'run.log'}" in failures
    assert "error: bad run" in (grid / bad / "run.log").read_text()


@pytest.mark.reliability
@pytest.mark.parametrize("argv", [["mini", "--columns="], ["mini", "--columns=,"], ["mini", "--tasks="]])
def test_an_empty_selection_is_not_the_whole_grid(argv, tmp_path, capsys):
    with pytest.raises(SystemExit, match="given: name at least one"):
        run_multiple.main([*argv, "--dry-run", "--root", str(tmp_path)])
    assert "runs (" not in capsys.readouterr().out  # no plan printed
