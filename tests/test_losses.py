"""IRL losses against values worked by hand (natural logs)."""

import math

import pytest
import torch

from trl_irl.rewards import losses


def test_bradley_terry_by_hand():
    # -log sigmoid(1 - 0) = log(1 + e^-1); -log sigmoid(0 - 2) = log(1 + e^2)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    got = losses.bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.2200948, abs=1e-6)


def test_gail_by_hand():
    # D = sigmoid(r): -log D(demo) = log(1 + e^-2), -log(1 - D(sample)) = log(1 + e^-1), averaged
    got = losses.gail_loss(torch.tensor([2.0]), torch.tensor([-1.0]))
    assert got.item() == pytest.approx(0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))), abs=1e-6)
    assert losses.gail_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses.gail_reward(torch.tensor([0.0])).item() == pytest.approx(math.log(2), abs=1e-6)  # -log(1 - 1/2)


def test_airl_by_hand():
    # demo tokens: q = (1/2, 1/4), pi = (1/4, 1/4) -> logits (log 2, 0) -> softplus(-l) = (log 1.5, log 2)
    # sample: q = 1/4, pi = 1/2 -> logit -log 2 -> softplus(l) = log 1.5; the second token is padding
    f_demo, pi_demo = torch.log(torch.tensor([[0.5, 0.25]])), torch.log(torch.tensor([[0.25, 0.25]]))
    f_sample, pi_sample = torch.log(torch.tensor([[0.25, 0.9]])), torch.log(torch.tensor([[0.5, 0.1]]))
    l_demo, l_sample = losses.airl_logits(f_demo, pi_demo), losses.airl_logits(f_sample, pi_sample)
    got = losses.airl_loss(l_demo, l_sample, torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))
    expected = 0.5 * ((math.log(1.5) + math.log(2)) / 2 + math.log(1.5))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4773856, abs=1e-6)
