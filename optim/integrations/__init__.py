"""Integrations with training frameworks; each module imports its framework only when imported.

* :mod:`optim.integrations.hf` — :class:`~optim.integrations.hf.LineSearchTrainer`, a
  ``transformers.Trainer`` that steps SaLSA, SLS or L4 (``pip install -e ".[hf]"`` in the checkout).
* :mod:`optim.integrations.lightning` — :class:`~optim.integrations.lightning.LineSearchModule`
  and :func:`~optim.integrations.lightning.line_search_step` for Lightning's manual optimization
  (``pip install -e ".[lightning]"`` in the checkout).

Import them by module path (``from optim.integrations.hf import LineSearchTrainer``): this package
itself imports neither framework.
"""
