"""The models of a run by role, from one provider: the policy, its reference, the reward and the critic.

Three layouts, chosen by the config and known only here (the stages never branch on them):

    full models         each role its own model, loaded from a folder (``peft=none``)
    LoRA, own bases     each role an adapter on a (quantised) base of its own (``peft=lora``)
    LoRA, one base      every role an adapter on the policy's base (``peft=lora shared_base=true``)

Every adapter starts from the BC policy's (``start``): the reward's and critic's are copies of it, as a separate
reward or critic model would be a copy of the BC model. ``Roles`` loads, saves and releases them.
"""

from __future__ import annotations

from pathlib import Path

from .models import load_causal_lm, load_reward_model, lora_config, save_model
from .rewards.saved import write_card
from .shared_base import CRITIC, POLICY, REWARD, AdapterRole, SharedBase, export_merged_policy, load_role


class Roles:
    """Args:
    init_path: the initial model's folder (the base of every adapter).
    tokenizer: the run's tokenizer (saved beside every model; its pad id is every classifier's).
    peft: the ``peft`` group (``enabled``, r, alpha, ...), quant: the ``quant`` group.
    shared_base: every adapter on one base.
    critic: the algorithm trains a critic (PPO).
    device: where models loaded for sampling and evaluation go.
    """

    def __init__(
        self, init_path: str, tokenizer, peft: dict, quant: dict, *, shared_base: bool, critic: bool, device=None
    ):
        self.init_path, self.tokenizer, self.peft, self.quant = init_path, tokenizer, peft, quant
        self.lora, self.shared, self.has_critic, self.device = bool(peft.get("enabled")), shared_base, critic, device
        self.bases: dict[str, SharedBase] = {}  # the bases of the arm in training, by role or "shared"

    # --- training ------------------------------------------------------------------------------------------
    def bc_model(self):
        """(model, SFTTrainer keyword arguments) for behaviour cloning: a path, or the (quantised) base loaded here
        (so the CPU 4-bit fix applies) with the adapter for TRL to add."""
        if not self.lora:
            return self.init_path, {}

        return load_causal_lm(self.init_path, self.quant), {"peft_config": lora_config(self.peft)}

    def _base(self, role: str, start: str, roles: tuple | None = None) -> SharedBase:
        key = "shared" if self.shared else role
        if key not in self.bases:
            if roles is None:
                roles = (
                    ((REWARD, CRITIC) if self.has_critic else (REWARD,))
                    if self.shared
                    else ((role,) if role != POLICY else ())
                )
            self.bases[key] = SharedBase(self.init_path, self.peft, self.quant, policy_adapter=start, roles=roles)
        return self.bases[key]

    def policy(self, start: str, learns_reward: bool = True):
        """The policy for a TRL trainer, from the policy at ``start``: the folder (full models), or the PEFT model with
        its adapter. ``learns_reward=False`` (the oracle): no reward adapter is added to a shared base."""
        if not self.lora:
            return start
        roles = None if learns_reward else ((CRITIC,) if self.shared and self.has_critic else ())
        return self._base(POLICY, start, roles).model

    def critic(self, start: str):
        """PPO's critic for the trainer: an adapter role (LoRA), or None (the trainer builds one from the policy)."""
        return self._base(CRITIC, start).role(CRITIC, "token") if self.lora and self.has_critic else None

    def reward(self, start: str, kind: str, saved: Path | None = None):
        """The reward model (``kind``: classifier or lm) starting from the policy at ``start``, or loaded from
        ``saved`` (a folder ``save_reward`` wrote)."""
        if not self.lora:
            return load_reward_model(saved or start, kind, self.tokenizer.pad_token_id)
        role = self._base(REWARD, start).role(REWARD, kind)
        if saved is not None:
            load_role(role, saved)
        return role

    def policy_role(self, start: str, policy):
        """The policy AIRL's reward reads log pi from while it pretrains: on a shared base its adapter as a role
        (the reward's forward switches adapters; log pi must not), else ``policy`` itself."""
        return AdapterRole(self._base(POLICY, start).model, POLICY, "lm") if self.lora and self.shared else policy

    def release(self):
        """Drop the bases of the arm just trained (its files are on disk)."""
        self.bases = {}

    # --- saving and loading ------------------------------------------------------------------------------------
    def save_model(self, model, directory):
        """The model (or a PEFT model's adapters) and the tokenizer, as safetensors."""
        save_model(model, self.tokenizer, directory)

    def save_policy_adapter(self, model, directory):
        """A trained policy as it trains on: a full model, or its adapter alone."""
        if not self.lora:
            return save_model(model, self.tokenizer, directory)
        model.save_pretrained(directory, selected_adapters=[POLICY])
        self.tokenizer.save_pretrained(directory)

    def save_policy(self, model, directory):
        """A trained arm: ``save_policy_adapter``, plus with LoRA the adapter merged into the unquantised base for
        inference (``merged/`` beside ``directory``)."""
        self.save_policy_adapter(model, directory)
        if self.lora:
            export_merged_policy(self.init_path, str(directory), Path(directory).parent / "merged", self.tokenizer)

    def save_reward(self, reward, directory, objective, start: str, policy: str | Path | None = None):
        """A reward model as ``reward(start, saved=directory)`` loads it (a full model, or the role) with the
        tokenizer, and the card ``trl_irl.load_reward`` reads (``rewards/saved.py``): ``objective``, ``start`` (the
        policy the reward was built from: a role's adapter is configured as its adapter), and ``policy``, the folder
        of the policy AIRL's reward reads log pi from."""

        if self.lora:
            reward.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        else:
            save_model(reward, self.tokenizer, directory)
        write_card(
            directory,
            objective,
            policy,
            {"base": self.init_path, "start": start, "peft": self.peft, "quant": self.quant} if self.lora else None,
        )

    def load_policy(self, path: str, trainable: bool = False):
        """A trained policy for sampling and evaluation (``trainable``: to train on, as SPIN does): a full model, or
        the (quantised) base with the policy adapter."""
        if not self.lora:
            return load_causal_lm(path, device=self.device).eval()
        from peft import PeftModel

        base = load_causal_lm(self.init_path, self.quant, device=self.device)
        return PeftModel.from_pretrained(base, path, is_trainable=trainable).eval()

    def evaluation_models(self, bc: str, reward_dir: Path | None, kind: str):
        """(BC policy, reward model or None) for evaluation: the reference every arm's KL is measured to, and the
        online-IRL reward as that arm left it. With LoRA both are adapters of one base."""
        if reward_dir is None:
            return self.load_policy(bc), None
        if not self.lora:
            reward = load_reward_model(reward_dir, kind, self.tokenizer.pad_token_id)
            return self.load_policy(bc), reward.to(self.device).eval()
        base = SharedBase(self.init_path, self.peft, self.quant, policy_adapter=bc, roles=(REWARD,), device=self.device)
        reward = base.role(REWARD, kind)
        load_role(reward, reward_dir)
        return base.model.eval(), reward.eval()
