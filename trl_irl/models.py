"""Build or load the models a run needs: a character tokenizer built locally, a tiny policy from a config,
reward models initialised from the policy. Everything is saved to disk so TRL reloads it by path."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_char_tokenizer(alphabet: list[str]) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus pad/eos/unk; decoding concatenates without spaces, so
    ``prompt + completion`` text re-tokenises to exactly the ids that were generated."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *alphabet])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_tiny_causal_lm(tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int, num_heads: int,
                         intermediate_size: int, max_positions: int, seed: int) -> torch.nn.Module:
    """A small Llama built from a config (no weights downloaded)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_model(model, tokenizer, path: str | Path) -> str:
    """Save model + tokenizer as safetensors; returns the path as a string (TRL takes paths)."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def load_reward_model(path: str | Path, kind: str) -> torch.nn.Module:
    """Load a reward model from a policy (or reward) checkpoint.

    ``kind="classifier"``: a sequence classifier with one label (Bradley-Terry, GAIL); from a policy checkpoint the
    trunk is copied and the score head starts small. ``kind="lm"``: a causal LM whose log-softmax is AIRL's f(s, a);
    from a policy checkpoint it starts equal to the policy, so AIRL's logit f - log pi starts at exactly 0.
    """
    kwargs = {"trust_remote_code": False}
    if kind == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    elif kind == "lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        raise ValueError(f"reward model kind must be 'classifier' or 'lm', got {kind!r}")
    return model
