"""An algorithm of your own that trains a critic: PPO with decoupled GAE (Yuan et al. 2025, "What's Behind PPO's
Collapse in Long-CoT? Value Optimization Holds the Secret", VC-PPO). The policy's advantages use GAE at
``gae_lambda``; the critic regresses on returns at its own ``critic_gae_lambda`` (1: Monte-Carlo returns, which carry
no bias from a value model that is still wrong early in training):

    advantages  = GAE(r, V; gamma, gae_lambda)
    V's target  = GAE(r, V; gamma, critic_gae_lambda) + V

Subclass ``PPOTrainer``, override ``compute_advantages`` (call ``super()``, which leaves the values V it read in
``output["old_values"]`` and the critic's targets in ``output["returns"]``), and register with ``critic=True``: the job
then builds a critic from the BC policy and passes it to the trainer, as it does for ``algo=ppo``. From the folder
holding this file:

    trl-irl plugins=[decoupled_gae] algo.name=decoupled_gae
"""

from dataclasses import dataclass, field

import torch

from trl_irl import PPOConfig, PPOTrainer, register_algorithm
from trl_irl.credit import gae


@dataclass
class DecoupledGAEConfig(PPOConfig):
    critic_gae_lambda: float = field(
        default=1.0, metadata={"help": "GAE lambda of the critic's targets (the policy's is gae_lambda)."}
    )


class DecoupledGAETrainer(PPOTrainer):
    def compute_advantages(self, rewards, mask, output, inputs):
        advantages = super().compute_advantages(rewards, mask, output, inputs)  # GAE at gae_lambda
        values = output["old_values"]
        _, returns = gae(rewards, values, mask, self.args.credit_gamma, self.args.critic_gae_lambda)
        output["returns"] = torch.where(mask.bool(), returns, values)  # V itself on padding: no loss there
        return advantages


register_algorithm("decoupled_gae", DecoupledGAEConfig, DecoupledGAETrainer, critic=True)
