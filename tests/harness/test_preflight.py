"""The checks before any work: every number is finite and in range, every name that makes a path
is a name, and whatever Hydra finds wrong before the run (an unknown key, an interpolation that
does not resolve, a run directory it cannot make) is one line with exit 2; a misspelt key gets
the project's "did you mean" in its plain form too, and ``lr`` points to the optimizer's step
size; wandb online needs a key the server takes."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from experiments.errors import ConfigError
from experiments.preflight import check_config

from harness_utils import CONF, compose_run_config, main_in_process

pytestmark = pytest.mark.reliability

ROOT = CONF.parent

FAST = ["trainer.progress=false", "trainer.device=cpu", "trainer.max_steps=1"]


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main_in_process([*FAST, *argv])
    return code, capsys.readouterr().err.strip().splitlines()


# -- numbers and names, before anything is built ------------------------------------------------
NUMBERS = [
    (["trainer.max_grad_norm=nan"], "trainer.max_grad_norm must be a finite number, got nan"),
    (["trainer.max_grad_norm=inf"], "trainer.max_grad_norm must be a finite number, got inf"),
    (["trainer.loss_smoothing=nan"], "trainer.loss_smoothing must be a finite number"),
    (["optimizer=adam", "+experiment/optimizers/nlp=adam", "optimizer.schedule.final_factor=nan"],
     "optimizer.schedule.final_factor must be a finite number"),
    (["optimizer=salsa_class", "+optimizer.build.init_step_size=inf"], "optimizer.build.init_step_size must be finite"),
    (["optimizer.build.growth=inf"], "optimizer.build.growth must be finite, got float inf"),
    (["optimizer.build.c=nan"], "optimizer.build.c must be finite"),
    (["+optimizer.build.betas=[0.9,nan,0.9]"], "optimizer.build.betas must be finite"),
    (["optimizer=l4_adam", "optimizer.build.alpha=inf"], "optimizer.build.alpha must be finite"),
    (["optimizer=l4_adam", "optimizer.build.tau=-inf"], "optimizer.build.tau must be finite"),
    (["optimizer=adam", "optimizer.build.lr=nan"], "optimizer.build.lr must be finite"),
    (["optimizer.build.max_trials=true"], "optimizer.build.max_trials must be int, got bool True"),
    (["model.build.channels=[]"], "model.build.channels must be a non-empty list (default [16, 32])"),
    (["model.build.dropout=nan"], "model.build.dropout must be finite"),
    (["trainer.threads=100000000000"], "trainer.threads must be at most 4096"),
    (["optimizer.name="], "optimizer.name='' names the run's folder"),
    (["model.name=a/b"], "model.name='a/b' names the run's folder"),
    (["dataset.name=.hidden"], "dataset.name='.hidden' names the run's folder"),
]


@pytest.mark.parametrize(("overrides", "message"), NUMBERS, ids=[" ".join(c[0]) for c in NUMBERS])
def test_a_number_or_name_that_cannot_work_is_refused_naming_it(overrides, message):
    with pytest.raises(ConfigError) as refused:
        check_config(compose_run_config(overrides))
    assert message in str(refused.value)


def test_an_unbounded_default_stays_allowed():
    """Prodigy's and D-Adaptation's growth_rate is infinite by default: inf is a value there."""
    check_config(compose_run_config(["optimizer=prodigy"]))
    check_config(compose_run_config(["optimizer=dadapt_adam"]))


@pytest.mark.parametrize("name", ["../../escaped", "a/../../b", "/abs"])
def test_a_name_with_a_path_makes_no_folder_anywhere(name, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # main.py finds conf/ beside itself
    code, lines = run_main([f"optimizer.name={name}"], capsys)
    assert code == 2 and len(lines) == 1 and "names the run's folder" in lines[0]
    assert not list(tmp_path.rglob("*seed0*")) and not list(work.iterdir())


@pytest.mark.parametrize("sweep", ["optimizer.name=fine,../../escaped", "model.name=a/b,fine",
                                   "dataset.name=fine,.hidden,other"])
def test_a_swept_name_with_a_path_refuses_the_multirun_before_any_job_folder(sweep, tmp_path, capsys,
                                                                             monkeypatch):
    """The multirun's config holds the first job's value only; a later value that is a path must
    stop it before Hydra makes the first job's folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main_in_process(["-m", *FAST, sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "names the run's folder" in lines[0], lines
    assert not (tmp_path / "sweep").exists() and not list(work.iterdir())


# -- what Hydra finds, in one line -----------------------------------------------------------------
HYDRA_FINDS = [
    (["trainer.batchsize=64"], "trainer.batchsize=64 is not a setting; did you mean trainer.batch_size?"),
    (["optimizer.build.cc=0.3"], "has no parameter 'cc'; did you mean optimizer.build.c?"),
    (["seeds=3"], "seeds=3 is not a setting; did you mean seed?"),
    (["trainer.epoch=2"], "did you mean trainer.epochs?"),
    (["lr=0.01"], "the optimizer's step size is optimizer.build.init_step_size"),
    (["optimizer.lr=0.01"], "optimizer.lr=0.01 is not a setting; the optimizer's step size is "
                            "optimizer.build.init_step_size"),
    (["optimizer=adam", "lr=0.01"], "the optimizer's step size is optimizer.build.lr"),
    (["optimizer=adam", "optimizer.build.learning_rate=0.01"], "did you mean optimizer.build.lr?"),
    (["optimizer=l4_adam", "optimizer.learning_rate=0.01"], "the optimizer's step size is optimizer.build.alpha"),
    (["trainer.batch_size=many"], "trainer.batch_size"),
    (["trainer.batch_size=["], "no viable alternative"),
    (["optimizer=nope"], "Could not find 'optimizer/nope'"),
    (["seed=${oc.env:SALSA_TEST_UNSET_VARIABLE}"], "Environment variable 'SALSA_TEST_UNSET_VARIABLE' not found"),
    (["data_dir=${oc.env:SALSA_TEST_UNSET_VARIABLE}"], "data_dir does not resolve"),
    (["data_dir=${no_such_key}"], "data_dir does not resolve: Interpolation key 'no_such_key' not found"),
    (["data_dir=${data_dir}"], "data_dir does not resolve: Recursive interpolation detected"),
    (["data_dir=${no_such_resolver:x}"], "data_dir does not resolve: Unsupported interpolation type no_such_resolver"),
]


@pytest.mark.parametrize(("overrides", "message"), HYDRA_FINDS, ids=[" ".join(c[0]) for c in HYDRA_FINDS])
def test_what_hydra_finds_is_one_line_with_exit_2(overrides, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SALSA_TEST_UNSET_VARIABLE", raising=False)
    code, lines = run_main([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(("where", "reason"), [
    (lambda tmp: tmp / "a_file" / "run", "Not a directory"),
    (lambda tmp: tmp / "a_file", "File exists"),
    (lambda tmp: tmp / ("x" * 300), "File name too long"),
    (lambda tmp: Path("/proc/no_such_process_folder/run"), "No such file or directory"),
])
def test_a_run_directory_hydra_cannot_make_is_one_line(where, reason, a_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = where(tmp_path)
    code, lines = run_main([f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: cannot make the run directory") and reason in lines[0]
    assert a_file.read_text() == "not a folder"


# -- wandb, before anything is built ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("key", "base_url", "message"), [
    ("short", None, "the wandb API key in WANDB_API_KEY is not one: API key must have 40+ characters"),
    ("k" * 39 + "!", None, "may only contain"),
    ("k" * 40, "closed", "no connection to the wandb server 127.0.0.1"),
])
def test_wandb_online_without_a_usable_key_or_network_is_one_line(key, base_url, message, tmp_path, capsys,
                                                                 monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", key)
    if base_url == "closed":
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    code, lines = run_main(["logger=wandb", "logger.wandb.mode=online", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()


class RefusingServer:
    """A wandb server on the loopback that answers every request with 401, as the real one
    answers a revoked or mistyped key."""

    def __enter__(self) -> str:
        class Refuse(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

            do_GET = do_POST

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_key_the_server_refuses_is_one_line_before_anything_is_built(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # well formed: only the server can tell
    with RefusingServer() as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        code, lines = run_main(["logger=wandb", "logger.wandb.mode=online", f"hydra.run.dir={tmp_path / 'run'}"],
                               capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"the wandb server {url} refused the API key in WANDB_API_KEY" in lines[0]
    assert "user is not logged in" in lines[0] and "k" * 40 not in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_key_in_netrc_is_checked_as_well(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(ROOT)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password tooshort\n")
    (tmp_path / ".netrc").chmod(0o600)
    code, lines = run_main(["logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and "the wandb API key in ~/.netrc is not one" in lines[0]


# -- the scripts read what they can and say what they skip ------------------------------------------
