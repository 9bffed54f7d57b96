"""Policy, reference, critic and reward as adapters on one base: the roles are independent, the reference is the
base, every adapter and head survives save/load, the merged export equals the adapter model, and the 4-bit CPU path
trains through an eval forward (bitsandbytes' repacking pitfall)."""

import functools
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from tests.tiny_configs import tiny_rl_config
from trl_irl.rewards import make_objective
from trl_irl.rewards.objectives import completion_logps, encode
from trl_irl.rewards.online import OnlineRewardUpdater
from trl_irl.shared_base import CRITIC, POLICY, REWARD, AdapterRole, SharedBase, export_merged_policy, load_role
from trl_irl.stages.context import open_context
from trl_irl.stages.training import (
    behaviour_cloning,
    build_policy_trainer,
    reward_pretraining,
)

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture
def shared(policy_path):
    torch.manual_seed(0)
    return SharedBase(policy_path, LORA)


def batch_for(task, tokenizer, demos):
    return encode(tokenizer, [d["prompt"] for d in demos], [d["completion"] for d in demos])


def policy_logps(shared, batch):
    with torch.no_grad():
        return completion_logps(shared.model, batch)


def snapshot(params):
    return [p.detach().clone() for p in params]


def perturb(*roles, scale=0.1):
    with torch.no_grad():
        for role in roles:
            for p in role.parameters():
                p.add_(scale * torch.randn_like(p))


def reward_updater(shared, tokenizer, demos, samples, objective="bt"):
    kind = "lm" if objective == "airl" else "classifier"
    updater = OnlineRewardUpdater(
        shared.role(REWARD, kind),
        tokenizer,
        make_objective(objective),
        learning_rate=1e-2,
        weight_decay=0.0,
        batch_size=16,
        steps=5,
        buffer_size=256,
        max_grad_norm=1.0,
        seed=0,
    )
    updater.add([d["prompt"] for d in demos], [d["completion"] for d in demos], samples)
    return updater


def test_roles_hold_only_their_own_adapter_and_head(shared):
    reward, critic = shared.role(REWARD, "classifier"), shared.role(CRITIC, "token")
    names = lambda role: list(role.adapter_weights)  # noqa: E731
    assert names(reward) and all(".reward." in n.replace("__", ".") for n in names(reward))
    assert all(".critic." in n.replace("__", ".") for n in names(critic))
    # outside its scope a role is frozen, so TRL's optimizer (which takes requires_grad parameters) never holds it
    policy_trainable = {id(p) for p in shared.model.parameters() if p.requires_grad}
    assert policy_trainable and not policy_trainable & {id(p) for p in [*reward.parameters(), *critic.parameters()]}
    with reward.active():
        assert all(p.requires_grad for p in reward.parameters())
    assert not any(p.requires_grad for p in reward.parameters())


def test_reward_update_leaves_policy_and_critic_unchanged(shared, task, tokenizer, demos):
    batch = batch_for(task, tokenizer, demos)
    critic = shared.role(CRITIC, "token")
    samples = [d["completion"][::-1] for d in demos]
    updater = reward_updater(shared, tokenizer, demos, samples)
    before_policy, before_critic = policy_logps(shared, batch), snapshot(critic.parameters())
    score = lambda: updater.rewards(["A"] * 4, [demos[i]["completion"] for i in range(4)])  # noqa: E731
    before_reward = score()
    metrics = updater.update()
    assert not torch.equal(score(), before_reward)  # the reward did learn
    assert metrics["grad_norm"] > 0
    torch.testing.assert_close(policy_logps(shared, batch), before_policy, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(critic.parameters(), before_critic))


def test_policy_update_leaves_reward_and_critic_unchanged(shared, task, tokenizer, demos):
    batch = batch_for(task, tokenizer, demos)
    reward, critic = shared.role(REWARD, "classifier"), shared.role(CRITIC, "token")
    policy_params = [p for p in shared.model.parameters() if p.requires_grad]
    before = snapshot([*reward.parameters(), *critic.parameters()])
    with torch.no_grad():
        reward_before = reward(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    optimizer = torch.optim.SGD(policy_params, lr=1.0)
    loss = -completion_logps(shared.model, batch).sum()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in [*reward.parameters(), *critic.parameters()])
    assert all(torch.equal(a, b) for a, b in zip([*reward.parameters(), *critic.parameters()], before))
    with torch.no_grad():
        torch.testing.assert_close(
            reward(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, reward_before, rtol=0, atol=0
        )


def test_critic_scores_match_a_plain_trunk_plus_head(shared, task, tokenizer, demos):
    """The role's per-position values and pooled reward equal the trunk run by hand under that adapter."""
    batch = batch_for(task, tokenizer, demos[:6])
    reward, critic = shared.role(REWARD, "classifier"), shared.role(CRITIC, "token")
    perturb(reward, critic)  # fresh LoRA adapters are the identity (B = 0): make each one differ
    with torch.no_grad():
        values = critic(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
        pooled = reward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        trunk = shared.model.get_base_model().model
        for role, out in ((critic, values), (reward, pooled)):
            shared.model.set_adapter(role.adapter)
            hidden = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            by_hand = role.score(hidden)[..., 0]
            if role is reward:
                last = batch["attention_mask"].sum(-1) - 1  # right padding: the last real token
                by_hand = by_hand[torch.arange(len(last)), last]
            torch.testing.assert_close(out, by_hand)
        shared.model.set_adapter(POLICY)


def test_reference_is_the_base_model(shared, policy_path, task, tokenizer, demos):
    """After the policy adapter moved, adapters-disabled log-probs equal the plain base model's."""
    batch = batch_for(task, tokenizer, demos)
    with torch.no_grad():
        for p in shared.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    base = AutoModelForCausalLM.from_pretrained(policy_path)
    with torch.no_grad(), shared.model.disable_adapter():
        reference = completion_logps(shared.model, batch)
    torch.testing.assert_close(reference, completion_logps(base, batch).detach())
    assert not torch.allclose(policy_logps(shared, batch), reference)  # the policy itself did move


def test_airl_reward_role_uses_its_adapter_and_the_policys(shared, task, tokenizer, demos):
    """AIRL's logit f - log pi on a shared base: f under the reward adapter, log pi under the policy's."""
    batch = batch_for(task, tokenizer, demos[:8])
    reward, policy = shared.role(REWARD, "lm"), AdapterRole(shared.model, POLICY, "lm")
    with torch.no_grad():
        for p in reward.adapter_weights.values():
            p.add_(0.05 * torch.randn_like(p))
        logits = make_objective("airl").score(reward, batch, policy)
        shared.model.set_adapter(REWARD)
        f = completion_logps(shared.model, batch)
        shared.model.set_adapter(POLICY)
        log_pi = completion_logps(shared.model, batch)
    torch.testing.assert_close(logits, (f - log_pi) * batch["completion_mask"][:, 1:])
    assert logits.abs().sum() > 0


def test_roles_save_and_load(shared, policy_path, task, tokenizer, demos, tmp_path):
    batch = batch_for(task, tokenizer, demos[:8])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    expected = {}
    for name, kind in ((REWARD, "classifier"), (CRITIC, "token")):
        role = shared.role(name, kind)
        with torch.no_grad():
            for p in role.parameters():
                p.add_(torch.randn_like(p))
            expected[name] = role(**inputs).logits
        role.save_pretrained(tmp_path / name)
    torch.manual_seed(1)
    fresh = SharedBase(policy_path, LORA)
    for name, kind in ((REWARD, "classifier"), (CRITIC, "token")):
        role = fresh.role(name, kind)
        load_role(role, tmp_path / name)
        with torch.no_grad():
            torch.testing.assert_close(role(**inputs).logits, expected[name])


def test_updater_checkpoint_of_a_reward_role(shared, policy_path, task, tokenizer, demos, tmp_path):
    samples = [d["completion"][::-1] for d in demos]
    updater = reward_updater(shared, tokenizer, demos, samples)
    updater.update()
    updater.save(tmp_path / "irl_reward")
    torch.manual_seed(1)
    other = reward_updater(SharedBase(policy_path, LORA), tokenizer, demos[:1], samples[:1])
    other.load(tmp_path / "irl_reward")
    for a, b in zip(updater.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert other.optimizer.state_dict()["state"].keys() == updater.optimizer.state_dict()["state"].keys()
    torch.testing.assert_close(
        other.rewards(["A"], [demos[0]["completion"]]), updater.rewards(["A"], [demos[0]["completion"]])
    )


def test_merged_export_equals_the_adapter_model(shared, policy_path, task, tokenizer, demos, tmp_path):
    batch = batch_for(task, tokenizer, demos[:8])
    with torch.no_grad():
        for p in shared.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    shared.model.save_pretrained(tmp_path / "adapter", selected_adapters=[POLICY])
    out = export_merged_policy(policy_path, str(tmp_path / "adapter"), tmp_path / "merged", tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(
        completion_logps(merged, batch).detach(), policy_logps(shared, batch), rtol=1e-4, atol=1e-4
    )


def test_merged_export_keeps_the_checkpoints_dtype(policy_path, task, tokenizer, demos, tmp_path):
    """A bf16 base (as released 7B models are) is merged and saved in bf16, not upcast to twice its size."""
    from peft import get_peft_model

    from trl_irl.models import lora_config, save_model

    base = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.bfloat16)
    bf16_path = save_model(base, tokenizer, tmp_path / "bf16_base")
    torch.manual_seed(0)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(bf16_path), lora_config(LORA), adapter_name=POLICY)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.add_(0.1 * torch.randn_like(p))
    adapted.save_pretrained(tmp_path / "adapter")
    out = export_merged_policy(bf16_path, str(tmp_path / "adapter"), tmp_path / "merged", tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=None)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    files = lambda d: sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))  # noqa: E731
    assert files(out) == pytest.approx(files(bf16_path), rel=0.05)
    batch = batch_for(task, tokenizer, demos[:8])
    with torch.no_grad():
        torch.testing.assert_close(
            completion_logps(merged, batch), completion_logps(adapted, batch), rtol=0.05, atol=0.05
        )


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_4bit_shared_base_trains_through_eval_forwards(policy_path, task, tokenizer, demos, tmp_path, bf16):
    """PPO on a 4-bit base with the critic and reward as adapters: no-grad evaluation forwards between training
    steps (bitsandbytes' CPU repacking) do not break training, and all three roles learn. ``bf16``: the dtypes of a
    GPU run (bf16 compute dtype and mixed precision; TRL's bf16 policy adapter next to fp32 roles and heads)."""
    from trl_irl import PPOConfig, PPOTrainer
    from trl_irl.evaluation import sample_completions

    torch.manual_seed(0)
    quant = {
        "mode": "4bit",
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "bfloat16" if bf16 else "float32",
    }
    shared = SharedBase(policy_path, LORA, quant=quant)
    assert shared.model.get_base_model().is_loaded_in_4bit
    reward, critic = shared.role(REWARD, "classifier"), shared.role(CRITIC, "token")
    args = tiny_rl_config(
        PPOConfig,
        tmp_path / "ppo",
        max_completion_length=task.horizon,
        max_steps=4,
        beta=0.01,
        bf16=bf16,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        seed=0,
        reward_batch_size=8,
        critic_learning_rate=1e-2,
    )
    data = Dataset.from_list([{"prompt": d["prompt"], "demonstration": d["completion"]} for d in demos])
    trainer = PPOTrainer(
        model=shared.model,
        reward_model=reward,
        critic=critic,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
    )
    tracked = {
        "policy": [p for p in shared.model.parameters() if p.requires_grad],
        "reward": list(reward.parameters()),
        "critic": list(critic.parameters()),
    }
    assert shared.model.get_input_embeddings().weight.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert {p.dtype for p in tracked["policy"]} == {torch.bfloat16}  # TRL casts a quantised model's adapter
    assert {p.dtype for p in [*tracked["reward"], *tracked["critic"]]} == {torch.float32}
    before = {k: snapshot(v) for k, v in tracked.items()}
    sample_completions(shared.model, tokenizer, ["A", "B"], task.horizon, 2, seed=0)  # an eval forward first
    shared.model.train()
    trainer.train()
    for role, params in tracked.items():
        assert any(not torch.equal(a, b) for a, b in zip(params, before[role])), f"{role} did not learn"
    assert (tmp_path / "ppo" / "checkpoint-4" / "critic" / "model.safetensors").exists()
    assert (tmp_path / "ppo" / "checkpoint-4" / "irl_reward" / "model" / "model.safetensors").exists()


def lm_head_input_is_contiguous(model) -> bool:
    """At the first forward of a generation: a (B, 1, hidden) slice of the prompt's hidden states, unless fixed."""
    seen = []  # pre-hooks run in order, each on the arguments the one before returned: this one runs last
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _, a: seen.append(a[0].is_contiguous()))
    prompt = torch.randint(5, 10, (3, 4))
    model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2, do_sample=False, pad_token_id=0
    )
    handle.remove()
    return seen[0]


def test_cpu_generation_hands_the_lm_head_a_contiguous_input(policy_path, tokenizer, demos, tmp_path):
    """pytorch/pytorch#151934: on CPU in bf16 a linear layer on the non-contiguous last-position slice copies the
    head's weight per sequence (+2.1 GB at Qwen2.5-0.5B's head, 8 sequences). Our loader and every trainer's policy
    hand the head a contiguous input; the hook is added once."""
    from trl_irl import OnlineRewardGRPOConfig, OnlineRewardGRPOTrainer
    from trl_irl.models import contiguous_lm_head_input, load_causal_lm

    assert not lm_head_input_is_contiguous(AutoModelForCausalLM.from_pretrained(policy_path))  # the premise
    model = load_causal_lm(policy_path)
    assert lm_head_input_is_contiguous(model)
    contiguous_lm_head_input(model)
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
    args = tiny_rl_config(
        OnlineRewardGRPOConfig, tmp_path / "run", per_device_train_batch_size=4, max_completion_length=4
    )
    trainer = OnlineRewardGRPOTrainer(
        model=policy_path,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": d["prompt"]} for d in demos]),
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
    )
    assert lm_head_input_is_contiguous(trainer.model)


@pytest.mark.parametrize("objective", ["bt", "airl"])
def test_reward_update_is_the_same_with_gradient_checkpointing(policy_path, task, tokenizer, demos, objective):
    """Checkpointing recomputes the forward during backward: the reward's backward must run under its adapter
    (``adapter_scope``), or the recomputation takes the policy's adapter and the gradients are wrong."""
    samples = [d["completion"][::-1] for d in demos]
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        shared = SharedBase(policy_path, LORA)
        kind = "lm" if objective == "airl" else "classifier"
        perturb(shared.role(REWARD, kind), AdapterRole(shared.model, POLICY, "lm"))
        if checkpointing:
            shared.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            shared.model.enable_input_require_grads()
        shared.model.train()
        updater = reward_updater(shared, tokenizer, demos, samples, objective)
        policy = AdapterRole(shared.model, POLICY, "lm") if objective == "airl" else None
        updater.steps = 1
        initial = snapshot(updater.params)
        updater.update(policy)
        results.append(snapshot(updater.params))
        moved = [not torch.equal(a, b) for a, b in zip(initial, results[-1])]
        assert all(moved[:-1]), "every adapter weight of the reward must learn"  # (the AIRL role has no head)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_roles_start_from_a_pretrained_policy_adapter(shared, policy_path, task, tokenizer, demos, tmp_path):
    """Built on a BC adapter, the reward and critic adapters start as copies of it: AIRL's logit log q - log pi is
    exactly 0 at the start (what kept online IRL stable in CALIBRATION.md)."""
    batch = batch_for(task, tokenizer, demos[:8])
    perturb(AdapterRole(shared.model, POLICY, "lm"))
    shared.model.save_pretrained(tmp_path / "bc", selected_adapters=[POLICY])
    built = SharedBase(policy_path, LORA, policy_adapter=str(tmp_path / "bc"))
    with torch.no_grad():
        logits = make_objective("airl").score(built.role(REWARD, "lm"), batch, AdapterRole(built.model, POLICY, "lm"))
        torch.testing.assert_close(policy_logps(built, batch), policy_logps(shared, batch))
    assert torch.equal(logits, torch.zeros_like(logits))
    assert any(p.requires_grad for p in built.model.parameters())  # the policy adapter trains on


@pytest.mark.parametrize("shared_base", [True, False])
def test_pipeline_puts_roles_on_one_base_or_on_their_own(shared_base, tmp_path):
    """peft=lora: policy, critic and reward adapters all start from BC's; shared_base=true puts them on one base,
    false gives each a base of its own (the memory benchmark's separate setup, with LoRA). PPO trains all three."""
    from hydra import compose, initialize_config_dir

    from trl_irl.config import CONF_DIR, config_dict
    from trl_irl.plan import RunPlan

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = config_dict(
            compose(
                "config",
                overrides=[
                    "recipe=toy",
                    "peft=lora",
                    "quant=4bit",
                    "algo=ppo",
                    f"shared_base={str(shared_base).lower()}",
                    "bc.num_train_epochs=1",
                    f"output_dir={tmp_path}",
                ],
            )
        )
    pipeline = RunPlan(cfg)
    pipeline = open_context(pipeline)
    bc = behaviour_cloning(pipeline)
    reward = reward_pretraining(pipeline, bc)
    trainer = build_policy_trainer(pipeline, "ppo", bc, reward, max_steps=2, save_strategy="no")
    policy, critic = trainer.model, trainer.critic
    bases = {id(policy), id(critic.peft_model), id(reward.peft_model)}
    assert len(bases) == (1 if shared_base else 3)
    assert sorted(policy.peft_config) == (["critic", "default", "ref", "reward"] if shared_base else ["default", "ref"])

    def weights():
        policy_adapter = [p for n, p in policy.named_parameters() if ".default." in n]
        return [snapshot(params) for params in (policy_adapter, list(critic.parameters()), list(reward.parameters()))]

    before = weights()
    trainer.train()
    for name, b, a in zip(("policy", "critic", "reward"), before, weights()):
        assert any(not torch.equal(x, y) for x, y in zip(b, a)), f"the {name} did not train"


def test_value_loss_backward_is_the_same_with_gradient_checkpointing(policy_path, tokenizer, demos):
    """PPO backpropagates its value loss on its own, under the critic's adapter, rather than adding it to the policy's
    loss for one backward: on a shared base the critic's adapter takes gradients only inside its scope, and
    checkpointing recomputes the critic's forward at backward time, under whichever adapter is active then. Measured
    here: the critic's gradients from PPO's own backward are the same with and without checkpointing; one combined
    backward after the critic's forward gives it other gradients (none), with checkpointing or without."""
    from collections import defaultdict
    from types import SimpleNamespace

    from tests.test_scoring_batches import trl_batch
    from trl_irl.batching import prompt_completion_batch
    from trl_irl.shared_base import adapter_scope
    from trl_irl.trainers.ppo import PPOTrainer

    output = trl_batch(tokenizer, [d["prompt"] for d in demos[:8]], [d["completion"] for d in demos[:8]])
    output["old_values"] = torch.zeros(output["completion_ids"].shape)
    output["returns"] = torch.linspace(-1, 1, output["completion_ids"].numel()).view_as(output["old_values"])
    grads = {}
    for checkpointing in (False, True):
        for combined in (False, True):
            torch.manual_seed(0)
            shared = SharedBase(policy_path, LORA)
            critic, policy = shared.role(CRITIC, "token"), AdapterRole(shared.model, POLICY, "lm")
            perturb(critic, policy)
            if checkpointing:
                shared.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
                shared.model.enable_input_require_grads()
            shared.model.train()
            fake = SimpleNamespace(
                model=shared.model,
                critic=critic,
                current_gradient_accumulation_steps=1,
                is_deepspeed_enabled=False,
                _metrics=defaultdict(lambda: defaultdict(list)),
                args=SimpleNamespace(cliprange_value=10.0, vf_coef=1.0),
                accelerator=SimpleNamespace(backward=lambda loss: loss.backward()),
            )
            fake.values = functools.partial(PPOTrainer.values, fake)

            def policy_loss(policy=policy, output=output):
                return -completion_logps(policy, prompt_completion_batch(output)).mean()

            if combined:  # the alternative: value loss + policy loss, one backward outside the critic's scope
                with adapter_scope(critic):
                    values = fake.values(critic, output)
                value_loss = (
                    0.5
                    * ((values - output["returns"]) ** 2 * output["completion_mask"]).sum()
                    / output["completion_mask"].sum()
                )
                (value_loss + policy_loss()).backward()
            else:  # PPOTrainer._compute_loss: the critic's backward first, then the policy's
                PPOTrainer._value_loss_backward(fake, output)
                policy_loss().backward()
            grads[checkpointing, combined] = [
                torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in critic.parameters()
            ]
    for a, b in zip(grads[False, False], grads[True, False]):
        torch.testing.assert_close(a, b)
    assert all(a.abs().sum() > 0 for a in grads[False, False][:-1])  # every adapter weight of the critic learns
    for checkpointing in (False, True):
        assert any(not torch.allclose(a, b) for a, b in zip(grads[False, False], grads[checkpointing, True]))
