"""A reward model that trains only its top k transformer blocks (``reward.online.trainable_layers``): an update then
costs a forward over the pairs and a backward through k blocks."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoConfig

from .shared_base import AdapterRole

BLOCK_INDEX = re.compile(r"(?:^|[._])layers[._]+(\d+)(?:[._]|$)")  # model.layers.3. / a role's __layers__3__


def check_block_count(k, total: int, key: str = "reward.online.trainable_layers"):
    """``k`` top blocks of a model with ``total`` must be 1 to ``total``; the error names ``key``."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total):
        raise ValueError(
            f"{key}={k!r}: the reward model has {total} blocks; give 1 to {total} (its top blocks train), "
            "or null (all of it trains)"
        )


def num_blocks(path: str | Path) -> int:
    """The number of transformer blocks of the model saved at ``path`` (its config alone is read)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    return config.get_text_config().num_hidden_layers


def limit_trainable_layers(model: torch.nn.Module, k: int | None, key: str = "reward.online.trainable_layers"):
    """Train only the top ``k`` transformer blocks of a reward model and what sits above them (the final norm and the
    score head); the embeddings and the blocks below are frozen (None: every parameter trains).

    Frozen parameters need no gradient, so backward stops at the lowest trainable block and AdamW holds k blocks'
    state: an update costs a forward over the pairs plus a backward through k blocks. A tied LM head is the input
    embedding and stays frozen with it (AIRL's q then trains its top blocks and final norm). On an ``AdapterRole``
    its adapter's weights in the lower blocks are frozen the same way.
    """
    if k is None:
        return model
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    total = config.num_hidden_layers
    check_block_count(k, total, key)
    names = [name for name, _ in model.named_parameters()]
    if not any(BLOCK_INDEX.search(name) for name in names):
        raise ValueError(
            f"{key}={k}: no parameter of {type(model).__name__} is in a block named layers.<i>, so the "
            "top blocks cannot be found; set it to null (all of it trains)"
        )

    def frozen(name: str) -> bool:
        block = BLOCK_INDEX.search(name)
        return int(block.group(1)) < total - k if block else "embed" in name

    if isinstance(model, AdapterRole):
        model.frozen = {name for name in names if frozen(name)}
    else:
        for name, p in model.named_parameters():
            if frozen(name):
                p.requires_grad_(False)
    return model
