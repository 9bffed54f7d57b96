"""A reward objective of your own: a hinge (margin) loss in place of Bradley-Terry's log-sigmoid.

    L = mean_pairs max(0, m - (r(x, y_demo) - r(x, y_sample)))

Subclass ``RewardObjective`` (a sequence classifier's score per completion), override ``loss``, register it; every
stage that learns a reward (pretraining, the online updates) then uses it by name. From the folder holding this file:

    trl-irl plugins=[hinge_objective] reward.objective=hinge
"""

import torch

from trl_irl import RewardObjective, register_objective


@register_objective
class HingeObjective(RewardObjective):
    name = "hinge"
    margin = 1.0

    def loss(self, demo: torch.Tensor, sample: torch.Tensor, batch) -> torch.Tensor:
        return torch.relu(self.margin - (demo - sample)).mean()
