"""What the model families share: reading the :class:`DataSpec`, and putting a backbone behind
the batch contract (``forward(batch: dict[str, Tensor]) -> Tensor``).

Torch only, so that the image models need neither ``transformers`` nor ``torchvision`` to import
this.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from experiments.data import DataSpec


def require(spec: DataSpec, field: str) -> Any:
    """``spec.<field>``, or a ``ValueError`` naming the field when the dataset did not set it
    (e.g. a classifier on a language-modelling dataset)."""
    value = getattr(spec, field)
    if value is None:
        raise ValueError(f"this model needs DataSpec.{field}, which the dataset leaves unset: {spec}")
    return value


class InputsModel(nn.Module):
    """A tensor-to-tensor network applied to ``batch["inputs"]`` (images or feature vectors).

    ``forward`` returns ``backbone(batch["inputs"])``: logits ``[B, num_classes]`` for inputs
    ``[B, *input_shape]``.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(batch["inputs"])


class FirstTokenClassifier(nn.Module):
    """A linear layer on the first token's last hidden state of a Hugging Face encoder.

    This is the paper's GLUE head. The first token is ``[CLS]`` (BERT) or ``<s>`` (RoBERTa);
    the encoder's pooler is not used, so build the encoder without one
    (``add_pooling_layer=False``): parameters that get no gradient would otherwise make DDP
    fail unless it searches for unused parameters every step.

    ``forward`` takes ``input_ids`` and ``attention_mask`` ``[B, T]`` (and ``token_type_ids``
    when the tokenizer makes them) and returns logits ``[B, num_classes]``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        hidden = self.encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
        ).last_hidden_state  # [B, T, hidden_size]
        return self.head(hidden[:, 0])
