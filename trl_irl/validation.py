"""Checks that stop bad input before any expensive work, each naming the problem and the fix."""

from __future__ import annotations


def check_dataset(dataset, required: list[str], name: str):
    """``dataset`` must be non-empty and have the ``required`` columns."""
    if dataset is None:
        raise ValueError(f"{name} is missing: pass a datasets.Dataset with columns {required}")
    columns = list(getattr(dataset, "column_names", None) or [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {missing} (it has {columns}); add them, e.g. "
                         f"dataset.rename_column('<yours>', '{missing[0]}')")
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: it needs at least one row with columns {required}")
    first = dataset[0]
    for column in required:
        if not isinstance(first[column], str):
            raise ValueError(f"{name}['{column}'] must hold plain text (str); got {type(first[column]).__name__}. "
                             "The trainers take plain text: render chat messages with tokenizer.apply_chat_template "
                             "first (the trl-irl job's task=dataset does this for you)")


def check_tokenizer(tokenizer, name: str = "processing_class"):
    """Reward models pool the last non-pad token, so padding must be its own token, distinct from EOS."""
    if tokenizer is None:
        raise ValueError(f"{name} is missing: pass the tokenizer of the model")
    if tokenizer.pad_token is None:
        raise ValueError(f"{name} has no pad token: add one with tokenizer.add_special_tokens({{'pad_token': '<pad>'}}) "
                         "and resize the model's embeddings (reusing EOS as pad makes a reward model score the wrong "
                         "token)")
    if tokenizer.eos_token is None:
        raise ValueError(f"{name} has no eos token: set tokenizer.eos_token; completions are scored with EOS appended")
