"""A cheaper reward update: only the top blocks train (``reward.online.trainable_layers``), and bf16 autocast on CPU
(``model.bf16``, ``trl_irl/precision.py``)."""

import copy

import pytest
import torch
from datasets import Dataset

from tests.tiny_configs import tiny_rl_config
from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer, precision
from trl_irl.models import build_tiny_causal_lm, load_reward_model, save_model
from trl_irl.rewards import OnlineRewardUpdater, make_objective
from trl_irl.rewards.objectives import encode
from trl_irl.shared_base import REWARD, SharedBase, adapter_scope, trainable_parameters
from trl_irl.stages.context import open_context
from trl_irl.trainable_layers import limit_trainable_layers


@pytest.fixture(scope="module")
def deep_path(task, tokenizer, tmp_path_factory):
    """A 4-block policy: enough blocks to freeze some and train others."""
    model = build_tiny_causal_lm(
        tokenizer, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, max_positions=32, seed=0
    )
    return save_model(model, tokenizer, tmp_path_factory.mktemp("deep"))


def pair_batch(tokenizer, demos, samples):
    prompts = [d["prompt"] for d in demos]
    return encode(tokenizer, prompts * 2, [d["completion"] for d in demos] + samples)


def samples_for(demos):
    return [d["completion"][::-1] for d in demos]  # a sample that differs from its demonstration


def block(name: str) -> int | None:
    import re

    found = re.search(r"layers[._]+(\d+)", name)
    return int(found.group(1)) if found else None


def above(name: str, cut: int) -> bool:
    """Whether ``name`` trains with the blocks from ``cut`` up trainable: those blocks, the final norm and the head."""
    return block(name) >= cut if block(name) is not None else "embed" not in name


# --- trainable layers ------------------------------------------------------------------------------------------------
def test_frozen_blocks_get_no_gradient_and_the_top_blocks_lose_none(deep_path, tokenizer, demos):
    """Backward with the top 2 of 4 blocks trainable: nothing below them has a gradient, and every gradient above
    equals full-depth training's on the same batch (freezing cuts the backward short without changing it)."""
    full = load_reward_model(deep_path, "classifier", tokenizer.pad_token_id)
    top = limit_trainable_layers(copy.deepcopy(full), 2)
    batch = pair_batch(tokenizer, demos[:8], samples_for(demos[:8]))
    objective = make_objective("bt")
    for model in (full, top):
        objective.pair_loss(model, batch)[0].backward()
    full_grads = dict(full.named_parameters())
    for name, p in top.named_parameters():
        below = not above(name, 2)
        assert p.requires_grad is not below, name
        if below:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, full_grads[name].grad, rtol=1e-5, atol=1e-7)
    trained = {name for name, p in top.named_parameters() if p.requires_grad}
    assert {block(n) for n in trained} == {2, 3, None} and "score.weight" in trained and "model.norm.weight" in trained


def test_the_updater_holds_and_moves_only_the_top_blocks(deep_path, tokenizer, demos):
    model = load_reward_model(deep_path, "classifier", tokenizer.pad_token_id)
    updater = OnlineRewardUpdater(
        model,
        tokenizer,
        make_objective("bt"),
        learning_rate=1e-2,
        weight_decay=0.0,
        batch_size=8,
        steps=3,
        buffer_size=64,
        max_grad_norm=1.0,
        seed=0,
        trainable_layers=1,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    updater.add([d["prompt"] for d in demos], [d["completion"] for d in demos], samples_for(demos))
    updater.update()
    held = {id(p) for group in updater.optimizer.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        top = above(name, 3)
        assert (id(p) in held) is top, name
        assert (not torch.equal(p, before[name])) is top, name


def test_a_reward_role_freezes_its_adapter_below_the_top_blocks(deep_path, tokenizer, demos):
    shared = SharedBase(deep_path, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    role = shared.role(REWARD, "classifier")
    limit_trainable_layers(role, 1)
    batch = pair_batch(tokenizer, demos[:8], samples_for(demos[:8]))
    with torch.no_grad():  # LoRA's B starts at zero: perturb it so every adapter weight gets a gradient
        for p in role.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with adapter_scope(role):
        make_objective("bt").pair_loss(role, batch)[0].backward()
    trainable = {id(p) for p in trainable_parameters(role)}
    for name, p in role.named_parameters():
        top = block(name) == 3 or block(name) is None
        assert (id(p) in trainable) is top, name
        assert (p.grad is not None) is top, name
        assert not p.requires_grad  # outside its scope a role never requires grad


@pytest.mark.parametrize("k", [0, 5, True, 1.5])
def test_a_bad_number_of_blocks_is_refused_naming_the_key(deep_path, tokenizer, k):
    model = load_reward_model(deep_path, "classifier", tokenizer.pad_token_id)
    with pytest.raises(ValueError, match=r"reward.online.trainable_layers=.*4 blocks"):
        limit_trainable_layers(model, k)


def test_the_config_refuses_a_bad_number_of_blocks(tmp_path):
    with pytest.raises(ValueError, match="reward_trainable_layers must be a number of blocks >= 1"):
        OnlineRewardGRPOConfig(output_dir=str(tmp_path), use_cpu=True, reward_trainable_layers=0)


def test_the_cli_refuses_more_blocks_than_the_model_has_before_any_training(tmp_path):
    from trl_irl import Refused
    from trl_irl.config import check

    with pytest.raises(Refused, match=r"reward.online.trainable_layers=3: the reward model has 2 blocks"):
        check("reward.online.trainable_layers=3", output_dir=tmp_path / "run")


def test_online_irl_trains_only_the_rewards_top_blocks(deep_path, tokenizer, demos, tmp_path):
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    trainer = OnlineRewardGRPOTrainer(
        model=deep_path,
        reward_model=load_reward_model(deep_path, "classifier", tokenizer.pad_token_id),
        train_dataset=dataset,
        processing_class=tokenizer,
        args=tiny_rl_config(
            OnlineRewardGRPOConfig,
            tmp_path,
            reward_batch_size=8,
            reward_learning_rate=1e-2,
            reward_trainable_layers=2,
            seed=0,
        ),
    )
    reward = trainer.reward_updater.model
    before = {n: p.detach().clone() for n, p in reward.named_parameters()}
    trainer.train()
    for name, p in reward.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved is above(name, 2), name


def test_reward_pretraining_honours_the_trainable_blocks(deep_path, tokenizer, demos, tmp_path):
    from trl_irl.trainers import IRLRewardConfig, IRLRewardTrainer

    model = load_reward_model(deep_path, "classifier", tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pairs = Dataset.from_list(
        [{"prompt": d["prompt"], "chosen": d["completion"], "rejected": s} for d, s in zip(demos, samples_for(demos))]
    )
    IRLRewardTrainer(
        model=model,
        args=IRLRewardConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            max_steps=2,
            per_device_train_batch_size=8,
            learning_rate=1e-2,
            save_strategy="no",
            trainable_layers=1,
        ),
        train_dataset=pairs,
        processing_class=tokenizer,
    ).train()
    for name, p in model.named_parameters():
        assert (not torch.equal(p, before[name])) is above(name, 3), name


# --- bf16 autocast ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting, has_bf16, expected, noted",
    [
        ("auto", True, False, False),
        ("auto", False, False, False),
        (True, True, True, False),
        (True, False, False, True),
        (False, True, False, False),
    ],
)
def test_bf16_setting_on_cpu(monkeypatch, setting, has_bf16, expected, noted):
    """On CPU bf16 is opt-in (true); a CPU without bf16 instructions runs fp32 and says so."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    value, note = precision.resolve_bf16(setting, use_cpu=True)
    assert value is expected and (note is not None) is noted


def test_bf16_on_a_gpu_is_trls_default_unless_set():
    assert precision.resolve_bf16("auto", use_cpu=False) == (None, None)
    assert precision.resolve_bf16(False, use_cpu=False) == (False, None)
    assert precision.resolve_bf16(True, use_cpu=False) == (True, None)


def test_a_bad_bf16_value_names_the_key():
    with pytest.raises(ValueError, match="model.bf16='yes': choose auto, true or false"):
        precision.resolve_bf16("yes", use_cpu=True)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_pipeline_sets_every_trainer_and_says_the_fallback_once(monkeypatch, tmp_path, capsys, has_bf16):
    from trl_irl.config import compose
    from trl_irl.plan import RunPlan

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    pipe = RunPlan(compose("model.bf16=true", "use_cpu=true", output_dir=tmp_path / "run"))
    assert pipe.bc_config().bf16 is has_bf16 and pipe.policy_config("grpo", 8).bf16 is has_bf16
    assert pipe.reward_pretrain_config().bf16 is has_bf16 and pipe.sample_bf16 is has_bf16
    pipe = open_context(pipe)
    said = capsys.readouterr().out.count("model.bf16=true: this CPU has no bf16 instructions")
    assert said == (0 if has_bf16 else 1)


def test_the_default_on_cpu_is_fp32(tmp_path):
    from trl_irl.config import compose
    from trl_irl.plan import RunPlan

    for overrides in ((), ("recipe=smollm2_word_reversal",)):
        cfg = compose(*overrides, "use_cpu=true", output_dir=tmp_path / "run")
        assert precision.resolve_bf16(cfg["model"]["bf16"], use_cpu=True) == (False, None)
    assert RunPlan(compose("use_cpu=true", output_dir=tmp_path / "run")).bc_config().bf16 is False


def test_bc_losses_in_bf16_autocast_agree_with_fp32_for_20_steps(task, tokenizer, tmp_path):
    """The tolerance the default rests on: each of the first 20 BC (SFT) losses within 2% of fp32's, from the same
    model and data order. SmolLM2 at the recipe's BC learning rate agrees for 2 steps and then parts, as any
    perturbation of that run would: docs/online_irl_speed.md."""
    from trl import SFTConfig, SFTTrainer

    path = save_model(
        build_tiny_causal_lm(
            tokenizer, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_positions=32, seed=0
        ),
        tokenizer,
        tmp_path / "init",
    )
    demos = task.sample_demonstrations(160, seed=2)
    data = Dataset.from_list([{"prompt": d["prompt"], "completion": d["completion"]} for d in demos])
    losses = {}
    for bf16 in (False, True):
        trainer = SFTTrainer(
            model=path,
            train_dataset=data,
            processing_class=tokenizer,
            args=SFTConfig(
                output_dir=str(tmp_path / str(bf16)),
                max_steps=20,
                per_device_train_batch_size=8,
                learning_rate=3e-3,
                bf16=bf16,
                use_cpu=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                seed=0,
            ),
        )
        trainer.train()
        losses[bf16] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 20 and losses[True][-1] < 0.8 * losses[True][0]  # it trained
    relative = [abs(a - b) / a for a, b in zip(losses[False], losses[True])]
    assert max(relative) < 0.02, relative


def test_the_reward_scores_and_learns_under_autocast(deep_path, tokenizer, demos):
    """Scores come back fp32 and within bf16's rounding of fp32's; an update in autocast moves fp32 weights."""
    model = load_reward_model(deep_path, "classifier", tokenizer.pad_token_id)
    prompts, completions = [d["prompt"] for d in demos], [d["completion"] for d in demos]

    def updater(bf16):
        return OnlineRewardUpdater(
            model,
            tokenizer,
            make_objective("bt"),
            learning_rate=1e-2,
            weight_decay=0.0,
            batch_size=8,
            steps=1,
            buffer_size=64,
            max_grad_norm=1.0,
            seed=0,
            bf16=bf16,
        )

    fp32, bf16 = updater(False).rewards(prompts, completions), updater(True).rewards(prompts, completions)
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, atol=0.05 * fp32.abs().max().item(), rtol=0)
    u = updater(True)
    u.add(prompts, completions, samples_for(demos))
    before = [p.detach().clone() for p in u.params]
    u.update()
    assert all(p.dtype == torch.float32 for p in u.params)
    assert any(not torch.equal(a, b) for a, b in zip(before, u.params))


def test_policy_generation_runs_under_autocast_only_when_bf16(policy_path, tokenizer, demos, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    seen = []
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: seen.append(torch.is_autocast_enabled("cpu")))
    dataset = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    for bf16 in (True, False):
        trainer = OnlineRewardGRPOTrainer(
            model=policy_path,
            reward_model=load_reward_model(policy_path, "classifier"),
            train_dataset=dataset,
            processing_class=tokenizer,
            args=tiny_rl_config(OnlineRewardGRPOConfig, tmp_path / str(bf16), max_steps=1, bf16=bf16),
        )
        trainer._generate(["a"])
    assert seen == [True, False]


# --- evaluation without repeated work ---------------------------------------------------------------------------------
def test_evaluation_scores_the_demonstrations_once_and_skips_bcs_own_kl(policy_path, bc_policy_path, tokenizer, task):
    """The demonstrations' rewards given by the caller equal those scored per arm, and BC's KL to itself is 0 with no
    forward pass, as a separate copy of the same weights computes it."""
    from transformers import AutoModelForCausalLM

    from trl_irl.evaluation import evaluate_arm, kl_to_reference

    heldout = task.sample_demonstrations(12, seed=7)
    policy = AutoModelForCausalLM.from_pretrained(bc_policy_path).eval()
    reference = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    reward = load_reward_model(policy_path, "classifier", tokenizer.pad_token_id).eval()
    objective = make_objective("bt")
    kwargs = dict(
        max_new_tokens=6,
        reference=reference,
        reward_objective=objective,
        reward_model=reward,
        batch_size=5,
        seed=0,
        name="grpo",
    )
    alone = evaluate_arm(policy, tokenizer, task, heldout, **kwargs)
    demos = objective.rewards(reward, tokenizer, [d["prompt"] for d in heldout], [d["completion"] for d in heldout])
    given = evaluate_arm(policy, tokenizer, task, heldout, demonstration_rewards=demos, **kwargs)
    assert given == alone
    prompts, samples = [d["prompt"] for d in heldout], [d["completion"] for d in heldout]
    assert kl_to_reference(policy, policy, tokenizer, prompts, samples, 5) == 0.0
    copy_of_policy = AutoModelForCausalLM.from_pretrained(bc_policy_path).eval()
    assert abs(kl_to_reference(policy, copy_of_policy, tokenizer, prompts, samples, 5)) < 1e-6
    assert kl_to_reference(policy, reference, tokenizer, prompts, samples, 5) > 1e-3
