"""An algorithm of your own: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"), GRPO without the
group standard deviation and with the token losses summed over a constant instead of each completion's length.

    A_{i,t} = G_{i,t} - mean_{j in group(i)} G_{j,t}

Subclass ``OnlineRewardGRPOTrainer`` and override ``compute_advantages``, the one place every estimator is called from
(on this process's token rewards (B, T), T = 1 with credit=sequence); ``SCALE_REWARDS`` names the TRL ``scale_rewards``
values the estimator honours. The config subclass sets TRL's matching defaults. From the folder holding this file:

    trl-irl plugins=[dr_grpo] algo.name=dr_grpo
"""

from dataclasses import dataclass, field

from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer, register_algorithm
from trl_irl.credit import grpo_advantages


@dataclass
class DrGRPOConfig(OnlineRewardGRPOConfig):
    scale_rewards: str = field(default="none", metadata={"help": "'none' only: no division by a standard deviation."})
    loss_type: str = field(default="dr_grpo", metadata={"help": "TRL's constant-normalised token loss."})


class DrGRPOTrainer(OnlineRewardGRPOTrainer):
    SCALE_REWARDS = ("none",)

    def compute_advantages(self, rewards, mask, output, inputs):
        returns = self.returns_to_go(rewards, mask)  # G_t = sum_k gamma^(k-t) r_k
        return self.across_processes(
            lambda g, m: grpo_advantages(g, m, self.num_generations, scale="none"), returns, mask
        )


register_algorithm("dr_grpo", DrGRPOConfig, DrGRPOTrainer)
