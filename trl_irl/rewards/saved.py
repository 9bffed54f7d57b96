"""A reward a run learnt, to score text after the run: ``trl_irl.load_reward("<run>/<algo>/final_reward")``.

Every folder a run saves a reward in (``<algo>/final_reward``: as the online-IRL arm left it; ``reward_pretrain/final``:
before policy training) holds ``trl_irl_reward.json``, which says how to rebuild and read it:

- **Input.** A (prompt, completion) pair is the prompt's tokens, then the completion's, then the tokenizer's EOS,
  each tokenised apart without special tokens, right-padded with the tokenizer's pad token (``objectives.encode``).
  A chat prompt is the text the chat template renders (with the generation prompt), as the run rendered it:
  ``samples_<arm>.jsonl`` holds the prompts as scored. The completion is scored as if it ended there (EOS appended,
  a cut-off one too).
- **Output**, per objective: ``bt`` and ``gail``, the sequence classifier's score at the EOS (``gail``: the logit that
  the text is a demonstration); ``airl``, the sum over the completion's tokens of f(prefix)[x_t] - log pi(x_t | prefix),
  with pi the arm's trained policy (the card names it). Higher is more like the demonstrations. This is the reward
  before the online trainer's running standardisation, the number ``samples_<arm>.jsonl`` records as ``reward``.
- **Layout.** A full model (a ``transformers`` classifier or causal LM, with the tokenizer, in the folder), or, with
  LoRA, the reward adapter and head (``shared_base.AdapterRole``) on the base model the card names.
- **In TRL.** A full ``bt`` or ``gail`` folder is a sequence classifier with its tokenizer, so
  ``trl.GRPOTrainer(reward_funcs="<run>/<algo>/final_reward")`` loads it as it is. TRL scores ``prompt + completion``
  as one text with no EOS and reads the raw score: the same number as ``score`` when the completion it is given
  ends with the tokenizer's EOS text and no token spans the prompt's end (``bt``; ``gail``'s reward is softplus of
  that score).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoints import atomic_write_text, read_json
from ..models import load_causal_lm, load_reward_model
from ..shared_base import REWARD, SharedBase, load_role
from .objectives import OBJECTIVES, make_objective

CARD = "trl_irl_reward.json"


def write_card(directory: str | Path, objective, policy: str | Path | None, lora: dict | None = None):
    """``CARD`` in ``directory``: the objective, the policy AIRL's reward reads log pi from, and with LoRA
    (``{"base", "start", "peft", "quant"}``) the base model, the policy adapter the reward role was built from, and
    the settings the role is rebuilt with. Paths are stored relative to ``directory``."""

    directory = Path(directory)

    def relative(path):
        return None if path is None else os.path.relpath(Path(path).resolve(), directory.resolve())

    card = {
        "objective": objective.name,
        "objective_module": type(objective).__module__,  # a plugin's: loading needs it imported first
        "prefix_weight": objective.prefix_weight,
        "kind": objective.model_kind,
        "policy": relative(policy) if objective.needs_policy else None,
        "input": "prompt tokens + completion tokens + EOS, tokenised apart without special tokens, right-padded",
        "lora": None if lora is None else {**lora, "base": relative(lora["base"]), "start": relative(lora["start"])},
    }
    atomic_write_text(directory / CARD, json.dumps(card, indent=2))


class SavedReward:
    """A learnt reward and what reading it needs. ``score(prompts, completions)``: one float per pair."""

    def __init__(self, model, tokenizer, objective, policy=None):
        self.model, self.tokenizer, self.objective, self.policy = model, tokenizer, objective, policy

    def score(self, prompts: list[str], completions: list[str], batch_size: int = 32) -> list[float]:
        """The reward of each (prompt, completion) pair (module docstring: the input and what the number means)."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"score: {len(prompts)} prompts and {len(completions)} completions; give one of each per pair"
            )
        return self.objective.rewards(
            self.model, self.tokenizer, list(prompts), list(completions), self.policy, batch_size
        ).tolist()

    def best_of(self, prompt: str, completions: list[str], batch_size: int = 32) -> str:
        """Best-of-n: the completion of ``prompt`` this reward scores highest (the first of a tie)."""
        if not completions:
            raise ValueError("best_of: no completions to choose from")
        rewards = self.score([prompt] * len(completions), completions, batch_size)
        return completions[max(range(len(completions)), key=rewards.__getitem__)]


def load_reward(path: str | Path, device=None) -> SavedReward:
    """The reward saved in ``path`` (a folder with ``CARD``), ready to ``score`` pairs; AIRL's also loads the policy
    it reads log pi from."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / CARD).exists():
        raise FileNotFoundError(
            f"{path} holds no {CARD}: give a reward folder a run saved (<run>/<algo>/final_reward "
            "or <run>/reward_pretrain/final)"
        )
    card = read_json(path / CARD)
    if card["objective"] not in OBJECTIVES:  # registered by a plugin module this process has not imported
        module = card.get("objective_module")
        raise ValueError(
            f"{path / CARD}: the reward objective {card['objective']!r} is not registered in this process (it has "
            f"{sorted(OBJECTIVES)}): "
            + (
                f"`import {module}`, the plugin that registers it, before load_reward"
                if module
                else "import the plugin module that registers it (the run's plugins=[...]) before load_reward"
            )
        )
    objective = make_objective(card["objective"], card["prefix_weight"])
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    policy_path = None if card["policy"] is None else str((path / card["policy"]).resolve())
    if card["lora"] is None:
        model = load_reward_model(path, card["kind"], tokenizer.pad_token_id).to(device or "cpu").eval()
        policy = None if policy_path is None else load_causal_lm(policy_path, device=device).eval()
        return SavedReward(model, tokenizer, objective, policy)
    from peft import PeftModel

    lora = card["lora"]  # rebuilt as the run's evaluation built it (roles.Roles.evaluation_models, load_policy)
    base_path = str((path / lora["base"]).resolve())
    base = SharedBase(
        base_path,
        lora["peft"],
        lora["quant"],
        policy_adapter=str((path / lora["start"]).resolve()),
        roles=(REWARD,),
        device=device,
    )
    base.model.eval()  # the role's forward runs the shared model: its LoRA dropout off
    model = base.role(REWARD, card["kind"])
    load_role(model, path)
    policy = (
        None
        if policy_path is None
        else PeftModel.from_pretrained(load_causal_lm(base_path, lora["quant"], device=device), policy_path).eval()
    )
    return SavedReward(model.eval(), tokenizer, objective, policy)
