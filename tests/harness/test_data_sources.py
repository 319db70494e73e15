"""What the loaders ask the hub for, the paper's GLUE order, and nanoGPT's random windows.

The hub is replaced by a recorder that accepts only the exact id, configuration and revision a
real load needs, and serves the split names the real copies have: a wrong name fails here as it
would fail (or silently load something else) on a machine with network.
"""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from experiments.data import DatasetNotFound
from experiments.data.glue import glue, tfds_order
from experiments.data.lm_text import RandomWindows, language_model_bundle, openwebtext

# The hub copies: (path, config, revision) -> the splits they hold.
GLUE_SPLITS = {"train", "validation", "test"}
HUB = {
    ("nyu-mll/glue", "sst2", None): GLUE_SPLITS,
    ("nyu-mll/glue", "mrpc", None): GLUE_SPLITS,
    ("nyu-mll/glue", "qnli", None): GLUE_SPLITS,
    ("nyu-mll/glue", "mnli", None): {"train", "validation_matched", "validation_mismatched",
                                     "test_matched", "test_mismatched"},
    # The script-free parquet export of OpenWebText (its main branch needs a loading script).
    ("Skylion007/openwebtext", "plain_text", "refs/convert/parquet"): {"train"},
}
GLUE_COLUMNS = {
    "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"), "qnli": ("question", "sentence"),
    "mnli": ("premise", "hypothesis"),
}


class RecordingHub:
    def __init__(self, rows: int = 6) -> None:
        self.calls: list[tuple] = []
        self.rows = rows

    def __call__(self, path, name=None, revision=None, **kwargs):
        key = (path, name, revision)
        self.calls.append(key)
        if key not in HUB or kwargs:
            raise AssertionError(f"no such copy on the hub: {key} {kwargs}")
        columns = GLUE_COLUMNS.get(name, ("text",))
        split_rows = {
            split: Dataset.from_dict({
                **{c: [f"{split} {c} {i} word" for i in range(self.rows)] for c in columns},
                **({"label": [i % 2 for i in range(self.rows)], "idx": list(range(self.rows))}
                   if path == "nyu-mll/glue" else {}),
            })
            for split in HUB[key]
        }
        return DatasetDict(split_rows)


@pytest.mark.parametrize("task", ["sst2", "mrpc", "qnli", "mnli"])
def test_glue_asks_the_hub_for_its_task(task, monkeypatch, tmp_path):
    hub = RecordingHub()
    monkeypatch.setattr("experiments.data.hub.load_dataset", hub)
    bundle = glue(task, "bert-offline", data_dir=str(tmp_path))
    assert hub.calls == [("nyu-mll/glue", task, None)]
    assert len(bundle.train) == len(bundle.val) == 6
    val_split = "validation_matched" if task == "mnli" else "validation"
    assert bundle.val[0][GLUE_COLUMNS[task][0]].startswith(val_split)


def test_openwebtext_asks_for_the_parquet_export(monkeypatch, tmp_path):
    hub = RecordingHub(rows=400)
    monkeypatch.setattr("experiments.data.hub.load_dataset", hub)
    bundle = openwebtext(data_dir=str(tmp_path), block_size=8, val_fraction=0.05)
    assert hub.calls == [("Skylion007/openwebtext", "plain_text", "refs/convert/parquet")]
    assert len(bundle.train) > 0 and len(bundle.val) > 0


def test_a_partial_parquet_export_is_refused_with_a_way_out(monkeypatch, tmp_path):
    def partial(path, name=None, revision=None):
        return DatasetDict({"partial-train": Dataset.from_dict({"text": ["a b c"] * 10})})

    monkeypatch.setattr("experiments.data.hub.load_dataset", partial)
    with pytest.raises(DatasetNotFound, match=r"partial-train.*save_to_disk"):
        openwebtext(data_dir=str(tmp_path), block_size=4)


def test_a_script_dataset_says_what_to_do(monkeypatch, tmp_path):
    def script(path, name=None, revision=None):
        raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")

    monkeypatch.setattr("experiments.data.hub.load_dataset", script)
    with pytest.raises(RuntimeError, match=r"loading script.*parquet.*datasets<4"):
        openwebtext(data_dir=str(tmp_path), block_size=4)


# -- the paper's GLUE order ------------------------------------------------------------------------
def test_tfds_order_is_tfds_own_hash_order():
    """tensorflow-datasets sorts each split by its md5 hasher salted with the split name."""
    hashing = pytest.importorskip("tensorflow_datasets.core.hashing")
    keys = [0, 1, 2, 5, 6, 9, 10, 11, 40, 41, 3667, 67348]  # MRPC-like gaps, SST-2's last idx
    for split in ("train", "validation", "validation_matched"):
        hasher = hashing.Hasher(split)
        expected = sorted(range(len(keys)), key=lambda i: hasher.hash_key(keys[i]))
        assert tfds_order(keys, split) == expected
    assert tfds_order(keys, "train") != tfds_order(keys, "validation")  # the salt matters


def test_glue_in_tfds_order_reads_the_hub_copy_permuted(monkeypatch, tmp_path):
    hashing = pytest.importorskip("tensorflow_datasets.core.hashing")
    hub = RecordingHub(rows=20)
    monkeypatch.setattr("experiments.data.hub.load_dataset", hub)
    stored = glue("sst2", "bert-offline", data_dir=str(tmp_path))
    ordered = glue("sst2", "bert-offline", data_dir=str(tmp_path), order="tfds")
    for split, rows, reordered in (("train", stored.train, ordered.train), ("validation", stored.val, ordered.val)):
        hasher = hashing.Hasher(split)
        expected_idx = sorted(range(20), key=hasher.hash_key)
        assert [row["idx"] for row in reordered] == expected_idx
        assert [row["sentence"] for row in reordered] == [rows[i]["sentence"] for i in expected_idx]


# -- nanoGPT's sampling ----------------------------------------------------------------------------
def test_random_windows_draw_with_replacement_and_afresh_each_epoch():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = RandomWindows(tokens, block_size=10, seed=4)
    assert len(windows) == 99  # as many as disjoint blocks
    starts = [windows.start(i) for i in range(len(windows))]
    assert all(0 <= s < 990 for s in starts)
    assert any(s % 10 for s in starts)  # not block-aligned
    item = windows[7]
    s = starts[7]
    assert item["input_ids"].tolist() == list(range(s, s + 10))
    assert item["labels"].tolist() == list(range(s + 1, s + 11))  # shifted by one
    # The same index gives the same window (resume, workers); another epoch draws anew.
    assert RandomWindows(tokens, 10, seed=4).start(7) == s
    windows.set_epoch(1)
    assert [windows.start(i) for i in range(len(windows))] != starts
    # Uniform over the start positions: the mean start of many draws is near the middle.
    many = RandomWindows(np.arange(100_001, dtype=np.uint16), block_size=1, seed=0)
    assert np.mean([many.start(i) for i in range(5000)]) == pytest.approx(50_000, rel=0.03)


def test_bundle_sampling_choice():
    tokens = np.arange(200, dtype=np.uint16)
    blocks = language_model_bundle("t", tokens, tokens, 10, 300)
    windows = language_model_bundle("t", tokens, tokens, 10, 300, sampling="random_windows", seed=1)
    assert type(blocks.train).__name__ == "TokenBlocks" and isinstance(windows.train, RandomWindows)
    assert type(windows.val).__name__ == "TokenBlocks"  # evaluation stays deterministic
    with pytest.raises(ValueError, match="sampling"):
        language_model_bundle("t", tokens, tokens, 10, 300, sampling="shuffled")
