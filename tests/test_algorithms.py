"""Every algorithm trains the policy the right way; PPO's critic learns and survives save/resume; token credit
wires through the trainers with the reward model it needs."""

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import ALGORITHMS
from trl_irl.evaluation import sample_completions
from trl_irl.models import load_reward_model


def make_args(algo, tmp_path, **overrides):
    fields = dict(
        per_device_train_batch_size=16, max_steps=60, learning_rate=3e-3, logging_steps=1, seed=0, reward_batch_size=8
    )
    return tiny_rl_config(ALGORITHMS[algo].config_cls, tmp_path / algo, **{**fields, **overrides})


def prefix_reward(task):
    """A fixed reward function: the fraction of the completion's tokens before its first invalid one."""

    def valid_fraction(prompts, completions, **_):
        return [task.valid_prefix_length(p, c) / task.horizon for p, c in zip(prompts, completions)]

    return valid_fraction


def success_rate(model, task, tokenizer, n=128):
    prompts = [task.prompts[i % len(task.prompts)] for i in range(n)]
    samples = sample_completions(model, tokenizer, prompts, task.horizon, n, seed=11)
    model.train()
    return sum(task.is_success(p, s) for p, s in zip(prompts, samples)) / n


def prompt_dataset(task, demos):
    return Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_each_algorithm_raises_the_success_rate(algo, tmp_path, task, tokenizer, bc_policy_path, demos):
    trainer = ALGORITHMS[algo].trainer_cls(
        model=bc_policy_path,
        args=make_args(algo, tmp_path),
        train_dataset=prompt_dataset(task, demos),
        processing_class=tokenizer,
        reward_funcs=[prefix_reward(task)],
    )
    before = success_rate(trainer.model, task, tokenizer)
    trainer.train()
    after = success_rate(trainer.model, task, tokenizer)
    assert after >= before + 0.1, (before, after)


def test_ppo_value_loss_falls(tmp_path, task, tokenizer, bc_policy_path, demos):
    args = make_args("ppo", tmp_path, max_steps=20, learning_rate=0.0, critic_learning_rate=3e-3)
    trainer = ALGORITHMS["ppo"].trainer_cls(
        model=bc_policy_path,
        args=args,
        train_dataset=prompt_dataset(task, demos),
        processing_class=tokenizer,
        reward_funcs=[prefix_reward(task)],
    )
    trainer.train()  # a frozen policy: the critic's targets come from a fixed distribution
    losses = [h["value_loss"] for h in trainer.state.log_history if "value_loss" in h]
    assert len(losses) == 20
    # V starts at 0: the loss falls towards the returns' own variance (what a perfect critic would leave)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3, losses


def test_ppo_critic_gradient_is_cleared_after_each_step(tmp_path, task, tokenizer, policy_path, demos):
    """Trainer zeroes only the model's gradients and the critic is outside the model: without our clearing, each
    critic step would take the sum of every earlier step's gradient."""
    trainer = ALGORITHMS["ppo"].trainer_cls(
        model=policy_path,
        args=make_args("ppo", tmp_path, max_steps=3),
        train_dataset=prompt_dataset(task, demos),
        processing_class=tokenizer,
        reward_funcs=[prefix_reward(task)],
    )
    trainer.create_optimizer()
    params = list(trainer.critic.parameters())
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda *_: seen.append(sum(p.grad.abs().sum().item() for p in params)))
    trainer.optimizer.register_step_post_hook(lambda *_: seen.append([p.grad for p in params]))
    trainer.train()
    assert len(seen) == 6 and all(grad > 0 for grad in seen[0::2])  # each step had a critic gradient
    assert all(g is None for grads in seen[1::2] for g in grads)  # and left none for the next


def critic_state(trainer):
    weights = {k: v.detach().clone() for k, v in trainer.critic.state_dict().items()}
    critic_params = {id(p) for p in trainer.critic.parameters()}
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    moments = [opt.state[p]["exp_avg"].clone() for g in opt.param_groups for p in g["params"] if id(p) in critic_params]
    return weights, moments


def test_ppo_critic_and_its_optimizer_state_survive_resume(tmp_path, task, tokenizer, policy_path, demos):
    kwargs = dict(
        train_dataset=prompt_dataset(task, demos), processing_class=tokenizer, reward_funcs=[prefix_reward(task)]
    )
    first = ALGORITHMS["ppo"].trainer_cls(
        model=policy_path, args=make_args("ppo", tmp_path, max_steps=2, save_strategy="steps", save_steps=2), **kwargs
    )
    first.train()
    saved = critic_state(first)
    checkpoint = tmp_path / "ppo" / "checkpoint-2"
    assert (checkpoint / "critic" / "model.safetensors").exists() and not (checkpoint / "critic.tmp").exists()

    class Recording(ALGORITHMS["ppo"].trainer_cls):
        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            self.after_load = critic_state(self)

    resumed = Recording(model=policy_path, args=make_args("ppo", tmp_path, max_steps=3), **kwargs)
    assert not torch.equal(resumed.critic.score.weight, saved[0]["score.weight"])  # fresh head is zero: can fail
    resumed.train(resume_from_checkpoint=str(checkpoint))
    weights, moments = resumed.after_load
    assert all(torch.equal(weights[k], saved[0][k]) for k in saved[0])
    assert len(moments) == len(saved[1]) > 0 and all(torch.equal(a, b) for a, b in zip(moments, saved[1]))
    assert resumed.state.global_step == 3


@pytest.mark.parametrize(
    "credit,objective", [("redistribution", "bt"), ("attention", "gail"), ("implicit", "airl"), ("airl", "airl")]
)
def test_token_credit_trains_with_an_online_reward(credit, objective, tmp_path, task, tokenizer, policy_path, demos):
    kind = "lm" if objective == "airl" else "classifier"
    trainer = ALGORITHMS["rloo_token"].trainer_cls(
        model=policy_path,
        reward_model=load_reward_model(policy_path, kind),
        args=make_args("rloo_token", tmp_path, max_steps=2, credit=credit, objective=objective, beta=0.05),
        train_dataset=prompt_dataset(task, demos),
        processing_class=tokenizer,
    )
    seen = {}

    def spy(rewards, mask, output, inputs, original=trainer.compute_advantages):
        seen["rewards"], seen["mask"] = rewards, mask
        seen["advantages"] = original(rewards, mask, output, inputs)
        return seen["advantages"]

    trainer.compute_advantages = spy
    trainer.train()
    assert seen["rewards"].shape == seen["mask"].shape and seen["rewards"].size(1) > 1  # per token
    assert (seen["advantages"][seen["mask"] == 0] == 0).all()
    assert trainer.reward_updater.num_updates == 4


def test_credit_that_needs_another_reward_model_fails_before_loading(tmp_path, task, tokenizer, demos):
    with pytest.raises(ValueError, match="credit=airl needs a lm reward model.*reward=airl"):
        ALGORITHMS["grpo"].trainer_cls(
            model=str(tmp_path / "missing"),
            reward_model=torch.nn.Linear(1, 1),
            args=make_args("grpo", tmp_path, credit="airl", objective="bt"),
            train_dataset=prompt_dataset(task, demos),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="credit=redistribution reads token-level scores from a reward model"):
        ALGORITHMS["grpo"].trainer_cls(
            model=str(tmp_path / "missing"),
            args=make_args("grpo", tmp_path, credit="redistribution"),
            train_dataset=prompt_dataset(task, demos),
            processing_class=tokenizer,
            reward_funcs=[prefix_reward(task)],
        )
    with pytest.raises(ValueError, match="algo=rloo_token"):
        make_args("rloo", tmp_path, credit="attention")


def test_remax_greedy_baseline_leaves_the_reward_statistics_and_its_metric_alone(
    tmp_path, task, tokenizer, bc_policy_path, demos
):
    """ReMax scores its greedy completions with the online reward, as the sampled ones were scored, but only the
    sampled completions move the running standardisation and enter the logged ``irl/raw_reward``."""
    reward = load_reward_model(bc_policy_path, "classifier", tokenizer.pad_token_id)
    args = make_args("remax", tmp_path, max_steps=2, reward_update_every=1, reward_update_steps=1)
    trainer = ALGORITHMS["remax"].trainer_cls(
        model=bc_policy_path,
        reward_model=reward,
        args=args,
        train_dataset=prompt_dataset(task, demos),
        processing_class=tokenizer,
    )
    calls, score = [], trainer.score_rewards

    def recording(*a, sampled, **kw):
        metric, statistics = trainer._metrics["train"]["irl/raw_reward"], trainer.reward_updater.standardizer
        before = (len(metric), statistics.count)
        rewards = score(*a, sampled=sampled, **kw)
        calls.append((sampled, len(rewards), len(metric) - before[0], statistics.count - before[1]))
        return rewards

    trainer.score_rewards = recording
    trainer.train()
    n = args.per_device_train_batch_size
    assert [c for c in calls if c[0]] == [(True, n, 1, n)] * 2  # each step's sampled batch: logged, counted
    greedy = [c for c in calls if not c[0]]
    assert len(greedy) == 2 and all(c[2:] == (0, 0) for c in greedy)  # its greedy completions: neither
