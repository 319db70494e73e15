"""Checkpoints carry a digest: altered bytes, a missing digest or a file that is not a checkpoint
of this harness are skipped with a warning for the newest intact one; with none usable, a resume
refuses and leaves the record as it was; where none was ever written, it starts from step 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import digest_path, list_checkpoints, load_latest_checkpoint, save_checkpoint

from harness_utils import Crash, CrashAt, main_in_process, run_config, working_copy

pytestmark = pytest.mark.reliability

RUN = ["trainer.progress=false", "trainer.device=cpu", "trainer.max_steps=6", "trainer.checkpoint_interval=3",
       "model.build.dropout=0.1"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("recorded") / "run"
    assert main_in_process([*RUN, f"hydra.run.dir={run_dir}"]) == 0
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000003.pt", "step_000000006.pt"]
    return run_dir


@pytest.fixture
def record(recorded, tmp_path, monkeypatch) -> Path:
    return working_copy(recorded, tmp_path, monkeypatch)


def alter_a_weight(checkpoint: Path) -> None:
    """Flip one byte in the middle of the first weight tensor's data, as a bad disk would."""
    weight = next(t for t in torch.load(checkpoint, weights_only=True)["model"].values() if t.numel() > 8)
    data, raw = bytearray(checkpoint.read_bytes()), weight.numpy().tobytes()
    where = data.find(raw) + len(raw) // 2
    data[where] ^= 0x40
    checkpoint.write_bytes(bytes(data))


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resume(record: Path) -> int:
    return main_in_process([*RUN, "trainer.resume=true", f"hydra.run.dir={record}"])


def test_altered_tensor_bytes_are_detected_and_the_run_resumes_from_the_intact_one(record, recorded, capsys):
    newest = list_checkpoints(record)[-1]
    alter_a_weight(newest)
    altered = torch.load(newest, weights_only=True)["model"]  # torch itself loads it without a word
    original = torch.load(list_checkpoints(recorded)[-1], weights_only=True)["model"]
    assert any(not torch.equal(altered[k], original[k]) for k in original)
    digest_mismatch = "step_000000006.pt does not load: its bytes do not match its digest"
    with pytest.warns(UserWarning, match=digest_mismatch):
        assert load_latest_checkpoint(record)["trainer"]["step"] == 3
    with pytest.warns(UserWarning, match="do not match its digest"):
        assert resume(record) == 0
    capsys.readouterr()
    resumed = torch.load(list_checkpoints(record)[-1], weights_only=True)["model"]
    assert all(torch.equal(resumed[k], original[k]) for k in original)  # steps 4-6 again, the same
    assert rows(record) == rows(recorded)


def test_a_file_that_is_not_a_checkpoint_of_this_harness_is_skipped(record, capsys):
    save_checkpoint(record, 9, {"weights": torch.ones(3)}, keep=3)  # loads, with a valid digest
    with pytest.warns(UserWarning, match=r"step_000000009.pt does not load: it is not a checkpoint of this "
                                         r"harness \(no model, optimizer, rng, scheduler, trainer\)"):
        assert resume(record) == 0
    capsys.readouterr()
    assert json.loads((record / "summary.json").read_text())["steps"] == 6


def test_a_checkpoint_without_its_digest_is_skipped(record):
    digest_path(list_checkpoints(record)[-1]).unlink()
    with pytest.warns(UserWarning, match="step_000000006.pt does not load: it has no digest file beside it"):
        assert load_latest_checkpoint(record)["trainer"]["step"] == 3


def test_with_no_usable_checkpoint_a_resume_refuses_and_keeps_the_record(record, capsys):
    first, newest = list_checkpoints(record)
    alter_a_weight(newest)
    first.write_bytes(first.read_bytes()[:1000])  # truncated
    kept = {name: (record / name).read_bytes() for name in ("metrics.jsonl", "summary.json", "config.yaml")}
    with pytest.warns(UserWarning, match="does not load"):
        assert resume(record) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: trainer.resume=true refused: none of the 2 checkpoints in ")
    assert {name: (record / name).read_bytes() for name in kept} == kept  # no restart from zero


def test_a_record_without_any_checkpoint_starts_over(tmp_path):
    """A run that failed before its first checkpoint is restarted with trainer.resume=true
    (run_multiple.py's "restart"): there is nothing to lose."""
    with pytest.raises(Crash):
        run_config(["trainer.max_steps=4"], tmp_path, callbacks=[CrashAt(2)])
    assert not list_checkpoints(tmp_path)
    assert run_config(["trainer.max_steps=4", "trainer.resume=true"], tmp_path)["steps"] == 4


@pytest.mark.newcomer
def test_a_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = run_config(["trainer.max_steps=3", "trainer.resume=true"], run_dir)
    assert summary["status"] == "finished" and summary["steps"] == 3
    err = capsys.readouterr().err
    assert f"trainer.resume=true: no checkpoint in {run_dir}, starting from step 0" in err.splitlines()
