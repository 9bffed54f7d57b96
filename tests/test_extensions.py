"""Extension points: an objective and an algorithm of the user's own, registered by a module that ``plugins=[...]``
imports before the config is checked. The worked examples of ``examples/`` are what is tested (and run end to end)."""

import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import trl_irl
from trl_irl.evaluation import sample_completions
from trl_irl.models import load_reward_model
from trl_irl.rewards import OBJECTIVES, OnlineRewardUpdater, RewardObjective, make_objective, register_objective
from trl_irl.trainers import (
    ALGORITHMS,
    CREDITS,
    OnlineRewardGRPOConfig,
    OnlineRewardGRPOTrainer,
    register_algorithm,
    register_credit,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(monkeypatch):
    """The examples importable by name, as from their folder; what they register is removed afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    before = [(registry, dict(registry)) for registry in (OBJECTIVES, ALGORITHMS, CREDITS)]
    yield importlib.import_module
    for registry, entries in before:
        registry.clear(), registry.update(entries)
    for name in ("hinge_objective", "dr_grpo", "uniform_credit", "decoupled_gae"):
        sys.modules.pop(name, None)


def test_the_hinge_objective_on_a_hand_worked_batch(examples):
    examples("hinge_objective")
    objective = make_objective("hinge")
    # margins r_demo - r_sample = 2, 0.5, -1: max(0, 1 - m) = 0, 0.5, 2 -> mean 2.5 / 3
    loss = objective.loss(torch.tensor([2.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 1.0]), batch=None)
    assert loss.item() == pytest.approx(2.5 / 3)


def test_the_hinge_objective_learns_through_the_one_reward_engine(examples, task, policy_path, tokenizer, demos):
    examples("hinge_objective")
    objective = make_objective("hinge")
    policy = load_reward_model(policy_path, "lm").eval()
    updater = OnlineRewardUpdater(
        load_reward_model(policy_path, "classifier"),
        tokenizer,
        objective,
        learning_rate=3e-3,
        weight_decay=0.0,
        batch_size=32,
        steps=15,
        buffer_size=256,
        max_grad_norm=1.0,
        seed=0,
    )
    prompts = [d["prompt"] for d in demos]
    updater.add(
        prompts,
        [d["completion"] for d in demos],
        sample_completions(policy, tokenizer, prompts, task.horizon, 64, seed=0),
    )
    heldout = task.sample_demonstrations(64, seed=99)
    h_prompts = [d["prompt"] for d in heldout]
    h_samples = sample_completions(policy, tokenizer, h_prompts, task.horizon, 64, seed=1)

    def margin():
        return (
            (updater.rewards(h_prompts, [d["completion"] for d in heldout]) - updater.rewards(h_prompts, h_samples))
            .mean()
            .item()
        )

    before = margin()
    updater.update()
    assert margin() > before + 0.2  # held-out demonstrations now score above the policy's samples


def test_dr_grpo_advantages_are_group_centred_returns_unscaled(examples):
    module = examples("dr_grpo")
    fake = SimpleNamespace(
        num_generations=2,
        across_processes=lambda fn, returns, mask: fn(returns, mask),
        returns_to_go=lambda rewards, mask: rewards * mask,
    )
    returns = torch.tensor([[1.0], [3.0], [2.0], [2.0], [5.0], [-1.0]])
    got = module.DrGRPOTrainer.compute_advantages(fake, returns, torch.ones_like(returns), None, None)
    assert got[:, 0].tolist() == [-1.0, 1.0, 0.0, 0.0, 3.0, -3.0]  # G - group mean, no division
    args = module.DrGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    assert (args.scale_rewards, args.loss_type) == ("none", "dr_grpo")
    module.DrGRPOTrainer.check_advantage_settings(args)
    with pytest.raises(ValueError, match="take \\['none'\\] only"):
        module.DrGRPOTrainer.check_advantage_settings(
            module.DrGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none", scale_rewards="group")
        )


def test_the_examples_run_end_to_end_through_the_cli_job(examples, tmp_path, monkeypatch):
    monkeypatch.chdir(EXAMPLES)  # plugins are found in the current folder, as a user runs them
    sys.path.remove(str(EXAMPLES))  # ... and not because the fixture put the folder on the path
    metrics = trl_irl.run(
        "recipe=toy",
        "plugins=[hinge_objective,dr_grpo,uniform_credit]",
        "reward.objective=hinge",
        "algo.name=dr_grpo",
        "credit.name=uniform",
        "arms=[bc,dr_grpo]",
        output_dir=tmp_path / "run",
    )
    assert metrics.path == tmp_path / "run" / "metrics.json" and json.loads(metrics.path.read_text()) == metrics
    assert set(metrics["arms"]) == {"bc", "bc@T*", "dr_grpo"}
    stage = json.loads((tmp_path / "run" / "dr_grpo" / "stage_config.json").read_text())
    assert stage["reward"]["objective"] == "hinge" and stage["algo"]["name"] == "dr_grpo"
    assert stage["credit"]["name"] == "uniform"
    state = json.loads(max((tmp_path / "run" / "dr_grpo").glob("checkpoint-*/trainer_state.json")).read_text())
    assert any("irl/loss" in row for row in state["log_history"])  # the hinge loss trained the reward online
    # the saved reward names the plugin it needs: a process that has not imported it is told to, before any model loads
    saved = tmp_path / "run" / "dr_grpo" / "final_reward"
    hinge = OBJECTIVES.pop("hinge")
    with pytest.raises(
        ValueError, match=r"objective 'hinge' is not registered in this process .*`import hinge_objective`"
    ):
        trl_irl.load_reward(saved)
    OBJECTIVES["hinge"] = hinge
    assert len(trl_irl.load_reward(saved).score(["a"], ["b"])) == 1


def test_decoupled_gae_regresses_the_critic_on_monte_carlo_returns(examples, monkeypatch):
    """The override alone, on a hand-worked batch: PPO's own step (stubbed) read V and returned the advantages; the
    critic's targets become GAE at critic_gae_lambda = 1, i.e. the returns-to-go sum_{k>=t} r_k (gamma 1) whatever V
    is, and V itself on padding."""
    module = examples("decoupled_gae")
    values = torch.tensor([[0.5, -2.0, 3.0], [1.0, 7.0, 0.0]])

    def ppo_step(self, rewards, mask, output, inputs):  # what PPOTrainer.compute_advantages leaves in output
        output.update(old_values=values, returns=torch.full_like(values, 99.0))
        return "advantages"

    monkeypatch.setattr(trl_irl.PPOTrainer, "compute_advantages", ppo_step)
    trainer = object.__new__(module.DecoupledGAETrainer)
    trainer.args = module.DecoupledGAEConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    output = {}
    assert trainer.compute_advantages(rewards, mask, output, None) == "advantages"
    assert output["returns"].tolist() == [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]]  # the last: padding keeps V = 0


def test_a_plugin_algorithm_with_a_critic_runs_through_the_cli_job(examples, tmp_path, monkeypatch):
    """Registered with critic=True, the job builds it a critic from BC and the trainer learns and saves it: nothing
    in the job names the algorithm."""
    from trl_irl.roles import Roles

    built = []
    critic = Roles.critic
    monkeypatch.setattr(Roles, "critic", lambda self, *a, **kw: built.append(critic(self, *a, **kw)) or built[-1])
    monkeypatch.chdir(EXAMPLES)
    sys.path.remove(str(EXAMPLES))
    metrics = trl_irl.run(
        "recipe=toy",
        "plugins=[decoupled_gae]",
        "algo.name=decoupled_gae",
        "arms=[bc,decoupled_gae]",
        output_dir=tmp_path / "run",
    )
    assert set(metrics["arms"]) == {"bc", "bc@T*", "decoupled_gae"} and len(built) == 1  # the job's critic
    checkpoint = max((tmp_path / "run" / "decoupled_gae").glob("checkpoint-*"))
    assert list((checkpoint / "critic").glob("*.safetensors"))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert any("value_loss" in row for row in state["log_history"])


def test_a_spec_still_reads_as_the_old_pair_with_a_warning():
    with pytest.warns(DeprecationWarning, match="AlgorithmSpec"):
        assert ALGORITHMS["grpo"][1] is OnlineRewardGRPOTrainer
    with pytest.warns(DeprecationWarning):
        config_cls, trainer_cls = ALGORITHMS["ppo"]
    assert (config_cls, trainer_cls) == (trl_irl.PPOConfig, trl_irl.PPOTrainer) and ALGORITHMS["ppo"].critic


def test_uniform_credit_on_a_hand_worked_batch(examples):
    examples("uniform_credit")
    from trl_irl.trainers.token_rewards import token_rewards

    output = {
        "completion_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]),
        "prompt_ids": torch.zeros(3, 2, dtype=torch.long),
    }
    got = token_rewards("uniform", output, torch.tensor([3.0, -1.0, 5.0]))
    assert got.tolist() == [[1.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]  # an empty row: 0


def test_a_registered_credit_is_checked_by_its_flags(examples):
    from trl_irl.trainers.token_rewards import check_credit

    register_credit("needs_lm", reward_model="lm", needs_reference=True)(lambda x: None)
    with pytest.raises(ValueError, match="credit=needs_lm needs a lm reward model.*choose reward=airl"):
        check_credit("needs_lm", make_objective("bt"), has_reward_model=True, beta=0.1, same_tokenizer=True)
    with pytest.raises(ValueError, match="credit=needs_lm needs the reference policy's log-probs: set beta > 0"):
        check_credit("needs_lm", make_objective("airl"), has_reward_model=True, beta=0.0, same_tokenizer=True)
    check_credit("needs_lm", make_objective("airl"), has_reward_model=True, beta=0.1, same_tokenizer=True)
    with pytest.raises(ValueError, match="credit='sequence' is taken"):
        register_credit("sequence")(lambda x: None)
    with pytest.raises(ValueError, match="credit='nope' is unknown"):
        OnlineRewardGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none", credit="nope")


def test_registering_a_taken_name_or_a_wrong_type_is_refused():
    class Other(RewardObjective):
        name = "bt"

    with pytest.raises(ValueError, match="'bt' is taken by BradleyTerryObjective"):
        register_objective(Other)
    with pytest.raises(TypeError, match="subclass of trl_irl.rewards.RewardObjective"):
        register_objective(object)
    with pytest.raises(ValueError, match="algo.name='grpo' is taken by OnlineRewardGRPOTrainer"):
        register_algorithm("grpo", OnlineRewardGRPOConfig, type("Mine", (OnlineRewardGRPOTrainer,), {}))
    with pytest.raises(TypeError, match="config dataclass and a transformers Trainer"):
        register_algorithm("mine", dict, OnlineRewardGRPOTrainer)


def test_a_plugin_that_is_not_there_is_named_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="plugins: no module named 'no_such_plugin'"):
        trl_irl.run("recipe=toy", "plugins=[no_such_plugin]", output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_objective_base_is_neutral_and_its_old_meaning_is_deprecated():
    from trl_irl.rewards import BradleyTerryObjective

    class NoLoss(RewardObjective):
        name = "no_loss"

    with pytest.raises(NotImplementedError, match="NoLoss must override loss"):
        NoLoss().loss(torch.zeros(2), torch.zeros(2), None)
    with pytest.warns(DeprecationWarning, match="use BradleyTerryObjective"):
        old = RewardObjective(prefix_weight=0.5)
    assert type(old) is BradleyTerryObjective and old.prefix_weight == 0.5
    assert type(make_objective("bt")) is BradleyTerryObjective


def test_the_renamed_trainer_and_config_answer_to_their_old_names_with_a_warning():
    from trl_irl.trainers import OnlineRewardGRPOConfig

    with pytest.warns(DeprecationWarning, match="now OnlineRewardGRPOTrainer"):
        assert trl_irl.OnlineIRLTrainer is OnlineRewardGRPOTrainer
    with pytest.warns(DeprecationWarning, match="now OnlineRewardGRPOConfig"):
        from trl_irl.trainers import OnlineIRLConfig
    assert OnlineIRLConfig is OnlineRewardGRPOConfig
