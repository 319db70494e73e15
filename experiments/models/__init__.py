"""Models for the harness, one module per family, all behind one contract.

A model builder (the ``_target_`` of a ``conf/model/*.yaml``) takes the dataset's
:class:`~experiments.data.DataSpec` as its first argument ``spec`` and returns an ``nn.Module``
whose ``forward(batch: dict[str, Tensor]) -> Tensor`` gives logits: ``[B, num_classes]`` for
classification, ``[B, T, vocab_size]`` for language modelling. The trainer computes the
cross-entropy against ``batch["labels"]``.
"""
