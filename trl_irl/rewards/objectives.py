"""How a reward model scores text, learns from demonstrations vs samples, and rewards the policy.

``RewardObjective`` owns the shared steps (tokenise, score, split, accuracy); each variant overrides the small
methods that make it what it is, as in ``imitation``'s adversarial trainers:

=========  ===================  =============================  =====================================
objective  reward model         loss (``losses.py``)           policy reward for a completion
=========  ===================  =============================  =====================================
bt         sequence classifier  Bradley-Terry, paired          r(x, y)
gail       sequence classifier  logistic discriminator         softplus(r) = -log(1 - D)
airl       causal LM q          token-level logistic on        sum_t log q(y_t|s_t) - log pi(y_t|s_t)
                                l_t = log q - log pi
=========  ===================  =============================  =====================================

AIRL's f is the log-softmax of a causal LM initialised as a copy of the policy: f is normalised and the initial
logit is exactly 0, so the reward starts at 0 and stays on the policy's scale (an unnormalised raw-logit f lets
online IRL drive the reward to about +5 per token, and the policy collapses after it).
"""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedTokenizerBase

from ..batching import check_batch_size, model_inputs
from . import losses


def tokenize_completions(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]
) -> list[tuple[list[int], int]]:
    """``(ids of prompt + completion + eos, prompt length)`` per row; the completion mask starts at the prompt length.
    Prompts and completions are tokenised apart (in two batched calls) so the mask is exact; EOS marks the end."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    return [(p + c + eos, len(p)) for p, c in zip(prompt_ids, completion_ids, strict=True)]


def collate(rows: list[tuple[list[int], int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(ids, prompt_length)`` rows: ``input_ids``, ``attention_mask`` and ``completion_mask`` (B, L)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        completion_mask[i, prompt_length : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def encode(tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    return collate(tokenize_completions(tokenizer, prompts, completions), tokenizer.pad_token_id)


def pair_accuracy(r_demo: torch.Tensor, r_sample: torch.Tensor, same_text) -> tuple[float | None, float]:
    """(accuracy over the pairs that are not ties, fraction of ties); a tie is a sample identical to its
    demonstration or an equal reward. None when every pair ties."""
    ties = torch.as_tensor(same_text, dtype=torch.bool, device=r_demo.device) | (r_demo == r_sample)
    decided = ~ties
    accuracy = float((r_demo > r_sample)[decided].float().mean()) if decided.any() else None
    return accuracy, float(ties.float().mean()) if ties.numel() else 0.0


def completion_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(x_t | x_<t) of a causal LM for t = 1..L-1, zeroed outside the completion: (B, L-1)."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    logps = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return logps * batch["completion_mask"][:, 1:]


class RewardObjective:
    """The base of every objective: how a reward model scores a sequence, learns from (demonstration, sample) pairs
    and rewards the policy. Its scoring is a sequence classifier's (one score per sequence, the reward as it is); a
    variant sets ``name`` and overrides ``loss`` (and ``score``, ``reward``, ``model_kind`` where it differs).
    ``BradleyTerryObjective`` is the default objective."""

    name: str | None = None  # what reward.objective= selects
    model_kind = "classifier"  # what ``models.load_reward_model`` builds for it
    needs_policy = False  # whether scoring needs the current policy's log-probs
    has_prefix_loss = True  # whether ``prefix_weight`` applies (a classifier scores every prefix)

    def __init__(self, prefix_weight: float = 0.0):
        """``prefix_weight``: weight of the same loss on every pair of prefixes (``prefix_pair_loss``), which trains
        the score the model gives a cut-off sequence, the quantity redistribution credit reads."""
        if prefix_weight < 0:
            raise ValueError(f"reward prefix_weight must be >= 0, got {prefix_weight}")
        if prefix_weight and not self.has_prefix_loss:
            raise ValueError(
                f"reward prefix_weight applies to sequence classifiers (bt, gail); the '{self.name}' "
                "objective is already per token: set prefix_weight=0"
            )
        self.prefix_weight = prefix_weight

    def __new__(cls, *args, **kwargs):
        if cls is RewardObjective:  # the name meant Bradley-Terry before it was the base
            warnings.warn(
                "RewardObjective() is the objectives' base and no longer Bradley-Terry: use BradleyTerryObjective() "
                "(this one returns it, for one release)",
                DeprecationWarning,
                stacklevel=2,
            )
            cls = BradleyTerryObjective
        return super().__new__(cls)

    # --- the three pieces a variant overrides --------------------------------------------------------------
    def score(self, model, batch, policy=None) -> torch.Tensor:
        """The model's raw output: a scalar per sequence (B,), or AIRL's per-token logits (B, L-1)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, 0]

    def loss(self, demo: torch.Tensor, sample: torch.Tensor, batch) -> torch.Tensor:
        """The loss of a batch of demonstration scores against sample scores (each (B,), or (B, L-1) per token)."""
        raise NotImplementedError(f"{type(self).__name__} must override loss(demo, sample, batch)")

    def reward(self, scores: torch.Tensor, batch) -> torch.Tensor:
        """The policy's reward for each sequence (B,)."""
        return scores

    # --- shared -----------------------------------------------------------------------------------------------
    def pair_loss(self, model, batch, policy=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a batch whose first half is demonstrations and second half samples for the same prompts."""
        self._check_policy(policy)
        if self.prefix_weight:
            scores, prefixes = self.scores_with_prefixes(model, batch)
        else:
            scores = self.score(model, batch, policy)
        scores = scores.float()  # the loss in fp32 under bf16 autocast
        demo, sample = scores.chunk(2)
        loss = self.loss(demo, sample, batch)
        metrics = {}
        if self.prefix_weight:
            prefix_loss = self.prefix_pair_loss(prefixes, batch)
            loss = loss + self.prefix_weight * prefix_loss
            metrics["prefix_loss"] = prefix_loss.item()
        with torch.no_grad():
            r_demo, r_sample = self.reward(scores, batch).chunk(2)
            demo_ids, sample_ids = batch["input_ids"].chunk(2)
            demo_mask, sample_mask = batch["attention_mask"].chunk(2)
            same = ((demo_ids == sample_ids) | (demo_mask == 0)).all(1) & (demo_mask == sample_mask).all(1)
            accuracy, ties = pair_accuracy(r_demo, r_sample, same)
            metrics |= {
                "loss": loss.item(),
                "accuracy": 0.5 if accuracy is None else accuracy,  # over pairs that are not ties; 0.5: all tie
                "ties": ties,
                "margin": (r_demo - r_sample).mean().item(),
                "mean_reward": torch.cat([r_demo, r_sample]).mean().item(),
            }
        return loss, metrics

    def prefix_pair_loss(self, prefixes: torch.Tensor, batch) -> torch.Tensor:
        """The objective's loss on every pair of prefixes (demonstration cut after t vs sample cut after t), over the
        completion positions where both exist and the two already differ (identical prefixes carry no gradient):
        L = mean_{b, t: y_demo[<=t] != y_sample[<=t]} loss(s(x, y_demo[<=t]), s(x, y_sample[<=t])).
        Pairs share the prompt, so position t is the same completion offset in both rows."""
        demo, sample = prefixes.chunk(2)
        ids_demo, ids_sample = batch["input_ids"].chunk(2)
        mask_demo, mask_sample = batch["completion_mask"].bool().chunk(2)
        differs = (ids_demo != ids_sample).cumsum(dim=-1) > 0
        keep = mask_demo & mask_sample & differs
        if not keep.any():
            return prefixes.sum() * 0.0  # every pair identical: nothing to learn, keep the graph
        return self.loss(demo[keep], sample[keep], batch)

    @torch.no_grad()
    def rewards(
        self, model, tokenizer, prompts, completions, policy=None, batch_size: int | None = None
    ) -> torch.Tensor:
        """Policy rewards (B,) for text completions, without gradients, ``batch_size`` rows at a time (None: all)."""
        self._check_policy(policy)
        check_batch_size(batch_size)
        device = next(model.parameters()).device
        prompts, completions = list(prompts), list(completions)
        size = batch_size or max(len(prompts), 1)
        scores = []
        for i in range(0, len(prompts), size):  # each chunk padded to its own longest row
            batch = {
                k: v.to(device) for k, v in encode(tokenizer, prompts[i : i + size], completions[i : i + size]).items()
            }
            scores.append(self.reward(self.score(model, batch, policy), batch).float())
        return torch.cat(scores) if scores else torch.zeros(0, device=device)

    # --- token-level views, for dense credit (``trainers/token_rewards.py``) -------------------------------------
    def prefix_scores(self, model, batch) -> torch.Tensor:
        """Reward of the sequence cut after each position, (B, L), in one forward pass: a causal sequence
        classifier's score head applied at every position (its pooled score is the head at the last token)."""
        return self.reward(self.scores_with_prefixes(model, batch)[1], batch)

    def scores_with_prefixes(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw pooled score (B,) and the raw score at every position (B, L), from one forward pass."""
        head = getattr(model, "score", None)
        if head is None:
            raise ValueError(
                f"prefix scores need a causal sequence classifier with a per-position `score` head "
                f"(Llama, Mistral, Qwen, ...); {type(model).__name__} has none: use credit=sequence"
            )
        captured = []
        handle = head.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            pooled = model(**model_inputs(batch), use_cache=False).logits[:, 0]
        finally:
            handle.remove()
        return pooled, captured[0][..., 0].float()

    def attention_weights(self, model, batch, query_index: torch.Tensor) -> torch.Tensor:
        """The reward model's last-layer attention from each row's scoring position ``query_index`` (B,) over all
        positions, averaged over heads: (B, L). Needs eager attention (``set_attn_implementation("eager")``)."""
        attentions = model(**model_inputs(batch), output_attentions=True, use_cache=False).attentions
        if not attentions or attentions[-1] is None:
            raise ValueError("the reward model returned no attention weights: load it with attn_implementation='eager'")
        last = attentions[-1].float().mean(dim=1)  # (B, L, L)
        return last[torch.arange(last.size(0), device=last.device), query_index]

    def _check_policy(self, policy):
        if self.needs_policy and policy is None:
            raise ValueError(
                f"the '{self.name}' reward objective needs the current policy to compute log pi(a|s): "
                "pass policy=<the policy model>"
            )


class BradleyTerryObjective(RewardObjective):
    """Bradley-Terry on a sequence classifier: the demonstration preferred over the sample, -log sigmoid(s_d - s_s)."""

    name = "bt"

    def loss(self, demo, sample, batch):
        return losses.bradley_terry_loss(demo, sample)


class GAILObjective(RewardObjective):
    """Logistic discriminator (demonstrations 1, samples 0); rewards the policy with -log(1 - D)."""

    name = "gail"

    def loss(self, demo, sample, batch):
        return losses.gail_loss(demo, sample)

    def reward(self, scores, batch):
        return losses.gail_reward(scores)


class AIRLObjective(RewardObjective):
    """Per-token discriminator logit f(s, a) - log pi(a|s) with f = log q(a|s) from a causal LM."""

    name = "airl"
    model_kind = "lm"
    needs_policy = True
    has_prefix_loss = False

    def score(self, model, batch, policy=None):
        f = completion_logps(model, batch)
        with torch.no_grad():
            policy_logps = completion_logps(policy, batch)
        return losses.airl_logits(f, policy_logps)

    def loss(self, demo, sample, batch):
        mask_demo, mask_sample = batch["completion_mask"][:, 1:].chunk(2)
        return losses.airl_loss(demo, sample, mask_demo, mask_sample)

    def reward(self, scores, batch):
        return scores.sum(dim=-1)  # scores are already zero outside the completion


OBJECTIVES: dict[str, type[RewardObjective]] = {
    cls.name: cls for cls in (BradleyTerryObjective, GAILObjective, AIRLObjective)
}


def _where(cls) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


def register_objective(cls: type[RewardObjective]) -> type[RewardObjective]:
    """Make ``reward.objective=<cls.name>`` (and ``OnlineRewardGRPOConfig(objective=...)``) use ``cls`` (usable as a
    class decorator). Subclass ``RewardObjective`` and override ``loss`` (and ``reward``, ``score``, ``model_kind`` if
    the model is not a sequence classifier); the CLI's ``plugins=[your_module]`` imports the module that registers
    it."""
    if not (isinstance(cls, type) and issubclass(cls, RewardObjective)):
        raise TypeError(f"register_objective takes a subclass of trl_irl.rewards.RewardObjective, got {cls!r}")
    taken = OBJECTIVES.get(getattr(cls, "name", None))
    if taken is not None and _where(taken) != _where(cls):  # the same class again (a module reloaded) replaces it
        raise ValueError(
            f"objective name {cls.name!r} is taken by {taken.__name__}: give {cls.__name__} a name of its "
            "own (the class attribute `name`, what reward.objective= selects)"
        )
    OBJECTIVES[cls.name] = cls
    return cls


def make_objective(name: str, prefix_weight: float = 0.0) -> RewardObjective:
    if name not in OBJECTIVES:
        raise ValueError(f"reward.objective={name!r} is unknown: choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](prefix_weight)
