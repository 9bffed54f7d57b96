"""Policy, reference, critic and reward on one (4-bit) base model, as LoRA adapters.

=========  ===========================================================  =====================================
role       on the shared base                                           trained by
=========  ===========================================================  =====================================
policy     adapter ``default`` + the base's LM head                     TRL's optimizer
reference  the base with adapters disabled (TRL's frozen ``ref`` copy   nothing
           when the policy adapter was pretrained, e.g. by BC)
reward     adapter ``reward`` + a score head (AIRL: the LM head, q)     ``OnlineRewardUpdater``'s AdamW
critic     adapter ``critic`` + a value head                            an extra group of TRL's optimizer
=========  ===========================================================  =====================================

One adapter is active at a time. ``AdapterRole`` turns a role into a module that looks like the separate model it
replaces (``.logits`` of a sequence classifier, token classifier or causal LM), so the reward objectives, the updater
and PPO use it unchanged. Two rules keep the roles independent:

- A role's parameters require grad only inside ``role.active()``: TRL's optimizer, DDP and PEFT's own adapter
  switching (``set_adapter`` re-freezes inactive adapters) never see them as the policy's.
- A role's backward pass runs inside ``role.active()`` too: gradient checkpointing recomputes the forward during
  backward, and it must recompute it with the same adapter (``adapter_scope``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoints import atomic_directory, load_weights
from .models import load_causal_lm, lora_config

POLICY, REWARD, CRITIC = "default", "reward", "critic"


def tuner_layers(peft_model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def active_adapter(peft_model, name: str, layers=None):
    """Route the forward pass of ``peft_model`` through adapter ``name``; restores the previous one on exit. Unlike
    PEFT's ``set_adapter`` it leaves every ``requires_grad`` flag as it is (the policy's optimizer state is TRL's)."""
    layers = tuner_layers(peft_model) if layers is None else layers
    previous = [layer._active_adapter for layer in layers]
    tuner = peft_model.base_model
    previous_tuner = tuner.active_adapter
    for layer in layers:
        layer._active_adapter = [name]
    tuner.active_adapter = name
    try:
        yield
    finally:
        for layer, prev in zip(layers, previous):
            layer._active_adapter = prev
        tuner.active_adapter = previous_tuner


def trainable_parameters(model) -> list:
    """What an optimizer of ``model`` should hold: an ``AdapterRole``'s adapter and head (frozen outside its scope),
    or a separate model's parameters that require grad."""
    if isinstance(model, AdapterRole):
        return model.trainable_parameters()
    return [p for p in model.parameters() if p.requires_grad]


def adapter_scope(model):
    """``model.active()`` for an ``AdapterRole``; a no-op context for a separate model. Wrap a role's backward pass."""
    return model.active() if isinstance(model, AdapterRole) else contextlib.nullcontext()


class _Output:
    """The slice of a transformers ModelOutput the objectives read."""

    def __init__(self, logits, attentions=None):
        self.logits, self.attentions = logits, attentions


class AdapterRole(torch.nn.Module):
    """One role on a shared PEFT model: its adapter (and head) as a module of its own.

    ``kind``: ``"classifier"`` (pooled score at the last non-padding token, ``.logits`` (B, 1), like
    ``AutoModelForSequenceClassification``; the head is ``.score`` so prefix scores can hook it), ``"token"`` (a score
    per position (B, L, 1), like ``AutoModelForTokenClassification``: the critic) or ``"lm"`` (the causal LM's logits
    under this adapter: AIRL's q). ``parameters()`` and ``state_dict()`` hold this role's adapter and head only.
    """

    def __init__(self, peft_model, adapter: str, kind: str):
        super().__init__()
        if kind not in ("classifier", "token", "lm"):
            raise ValueError(f"AdapterRole kind must be 'classifier', 'token' or 'lm', got {kind!r}")
        if adapter not in peft_model.peft_config:
            raise ValueError(
                f"the shared model has no adapter {adapter!r} (it has {sorted(peft_model.peft_config)}): "
                "build it with SharedBase"
            )
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule: the other roles' weights are not ours
        self.adapter, self.kind = adapter, kind
        self.config = peft_model.get_base_model().config
        self._layers = tuner_layers(peft_model)
        weights = {n: p for n, p in peft_model.named_parameters() if f".{adapter}." in n}
        self.adapter_weights = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in weights.items()})
        if kind != "lm":
            base = peft_model.get_base_model()
            hidden = self.config.get_text_config().hidden_size
            head = torch.nn.Linear(hidden, 1, bias=False)
            torch.nn.init.zeros_(head.weight) if kind == "token" else torch.nn.init.normal_(
                head.weight, std=hidden**-0.5
            )
            self.score = head.to(device=base.device)
        self.frozen: set[str] = set()  # names of this role's parameters that never train (``limit_trainable_layers``)
        if adapter != POLICY:  # the policy's flags are TRL's (and PEFT's)
            self.requires_grad_(False)

    def trainable_parameters(self) -> list:
        return [p for name, p in self.named_parameters() if name not in self.frozen]

    @contextlib.contextmanager
    def active(self):
        """This role's adapter routes the forward pass and its trainable parameters require grad (nests: restores on
        exit)."""
        was = [p.requires_grad for p in self.parameters()]
        for name, p in self.named_parameters():
            p.requires_grad_(name not in self.frozen)
        try:
            with active_adapter(self.peft_model, self.adapter, self._layers):
                yield
        finally:
            for p, flag in zip(self.parameters(), was):
                p.requires_grad_(flag)

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_attentions=False, **kwargs):
        kwargs.pop("use_cache", None)
        with self.active():
            if self.kind == "lm":
                out = self.peft_model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                    output_attentions=output_attentions,
                    **kwargs,
                )
                return _Output(out.logits, getattr(out, "attentions", None))
            trunk = self.peft_model.get_base_model().base_model
            out = trunk(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_attentions=output_attentions,
            )
            hidden = out.last_hidden_state
            scores = self.score(hidden.to(self.score.weight.dtype))  # (B, L, 1)
        if self.kind == "token":
            return _Output(scores, out.attentions)
        last = (
            attention_mask.long().cumsum(-1).argmax(-1)
            if attention_mask is not None
            else torch.full((input_ids.size(0),), input_ids.size(1) - 1, device=input_ids.device)
        )
        return _Output(scores[torch.arange(scores.size(0), device=scores.device), last], out.attentions)

    def set_attn_implementation(self, implementation: str):
        """Attention weights need the eager kernel; on a shared base it applies to every role."""
        self.peft_model.get_base_model().set_attn_implementation(implementation)

    def save_pretrained(self, directory, safe_serialization: bool = True):
        """This role's adapter and head as one safetensors file (keys as in ``state_dict()``)."""

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            os.path.join(directory, "model.safetensors"),
        )


class SharedBase:
    """Builds the shared PEFT model: the base (4-bit, 8-bit or full precision) with a policy adapter (fresh, or a
    pretrained one such as BC's) and ``reward`` / ``critic`` adapters (fresh, or copies of the pretrained policy
    adapter); ``role(name, kind)`` gives each its module. Pass ``.model`` to a TRL trainer as the policy (not a path,
    not with ``peft_config``)."""

    def __init__(
        self,
        base_path: str,
        lora: dict,
        quant: dict | None = None,
        policy_adapter: str | None = None,
        roles: tuple[str, ...] = (REWARD, CRITIC),
        device=None,
    ):
        from peft import PeftModel, get_peft_model

        base = load_causal_lm(base_path, quant, device=device)
        if policy_adapter is not None:
            self.model = PeftModel.from_pretrained(base, policy_adapter, adapter_name=POLICY, is_trainable=True)
        else:
            self.model = get_peft_model(base, lora_config(lora, "CAUSAL_LM"), adapter_name=POLICY)
        for name in roles:
            if policy_adapter is None:
                self.model.add_adapter(name, lora_config(lora, "CAUSAL_LM"))
            else:  # start from the pretrained policy, as a separate reward or critic model would (AIRL's q = pi)
                config = copy.deepcopy(self.model.peft_config[POLICY])
                config.inference_mode = False
                self.model.add_adapter(name, config)
                copy_adapter(self.model, POLICY, name)
        self.model.set_adapter(POLICY)  # the policy's adapter trainable, the roles' frozen until used
        self.roles: dict[str, AdapterRole] = {}

    def role(self, name: str, kind: str) -> AdapterRole:
        if name not in self.roles:
            self.roles[name] = AdapterRole(self.model, name, kind)
        return self.roles[name]


@torch.no_grad()
def copy_adapter(peft_model, source: str, target: str):
    """Copy adapter ``source``'s weights into adapter ``target`` (same config)."""
    for name, param in peft_model.named_parameters():
        if f".{source}." in name:
            peft_model.get_parameter(name.replace(f".{source}.", f".{target}.")).copy_(param)


def load_role(role: AdapterRole, directory):
    """Load what ``AdapterRole.save_pretrained`` wrote, in place (the shared base's parameters are updated)."""

    load_weights(role, directory, "AdapterRole.save_pretrained")


def export_merged_policy(base_path: str, adapter_dir: str, out_dir, tokenizer=None, dtype="auto") -> str:
    """The policy for inference: the unquantised base (never the 4-bit copy: merging into quantised weights loses
    precision) with the policy adapter merged in, saved as safetensors. ``dtype="auto"`` keeps the checkpoint's own
    dtype (a bf16 7B stays 15 GB, where float32 would need 30 GB of RAM and disk). Returns ``out_dir``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, adapter_dir, adapter_name=POLICY).merge_and_unload()

    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return str(out_dir)
