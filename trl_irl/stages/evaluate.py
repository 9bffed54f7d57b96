"""The evaluation stage: every arm read back from disk and sampled on the held-out prompts, BC also at the temperature
its validation rows like best (``bc@T*``), and the learned reward as a reranker of BC's samples (its diagnostics)."""

from __future__ import annotations

import json

from ..checkpoints import atomic_write_text
from ..evaluation import evaluate_arm, rerank, sample_and_score, samples_file
from ..precision import cpu_autocast
from .context import Context
from .training import release_memory

BC_BEST = "bc@T*"  # the evaluation's arm: BC at the sampling temperature that does best on validation rows


def evaluate(ctx: Context, bc: str) -> tuple[dict[str, dict], dict[str, list[dict]], dict]:
    """Every arm on one sample per held-out prompt, its KL measured to the BC policy ``bc`` and scored by the
    online-IRL reward as that arm left it (where one ran), then the learned reward's diagnostics (reusing the BC
    policy and the reward loaded here). Returns (metrics, records) per arm, the records also in ``samples_<arm>.jsonl``
    (UTF-8) beside metrics.json, and ``reward_diagnostics``."""
    plan, runner, e = ctx.plan, ctx.runner, ctx.cfg["eval"]
    reward_dir = ctx.out / plan.algo / "final_reward"
    reward_dir = reward_dir if plan.algo in plan.arms and reward_dir.exists() else None
    reference, reward = ctx.roles.evaluation_models(bc, reward_dir, plan.objective.model_kind)
    arms, records = {}, {}
    demo_rewards = None  # the same for every arm unless the reward reads the policy (AIRL): scored once
    if reward is not None and not plan.objective.needs_policy:
        with cpu_autocast(plan.sample_bf16):
            demo_rewards = plan.objective.rewards(
                reward,
                ctx.tokenizer,
                [r["prompt"] for r in ctx.data.heldout],
                [r["completion"] for r in ctx.data.heldout],
                None,
                e["batch_size"],
            )
    best_temperature = best_bc_temperature(ctx, reference) if "bc" in plan.arms else None
    with_best = [a for arm in plan.arms for a in ([arm, BC_BEST] if arm == "bc" and best_temperature else [arm])]
    for arm in with_best:  # bc@T* beside bc in the table
        with runner.timing(f"eval_{arm}", header=False):
            policy = reference if arm in ("bc", BC_BEST) else ctx.roles.load_policy(str(plan.final_dir(arm)))
            arms[arm], records[arm] = evaluate_arm(
                policy,
                ctx.tokenizer,
                plan.task,
                ctx.data.heldout,
                max_new_tokens=ctx.data.max_completion_length,
                reference=reference,
                reward_objective=plan.objective if reward is not None else None,
                reward_model=reward,
                batch_size=e["batch_size"],
                seed=ctx.seed("evaluation"),
                name=arm,
                bf16=plan.sample_bf16,
                demonstration_rewards=demo_rewards,
                num_samples=e["num_samples"],
                temperature=best_temperature["temperature"] if arm == BC_BEST else 1.0,
            )
            if arm == BC_BEST:
                arms[arm] |= best_temperature
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[arm])
            runner.on_main(atomic_write_text, ctx.out / samples_file(arm), text)
            if policy is not reference:
                del policy
            release_memory()
    with runner.timing("reward_diagnostics", header=False):
        diagnostics = reward_diagnostics(ctx, bc, reference, reward)
    return arms, records, diagnostics


def best_bc_temperature(ctx: Context, bc_policy) -> dict | None:
    """BC's sampling temperature for the ``bc@T*`` arm: of ``eval.temperatures`` (0: greedy), the one whose success on
    the validation rows (never the held-out ones) is highest, the lowest of a tie. None without a verifier or
    temperatures. Returns ``{"temperature", "validation_success": {T: success}}``."""
    temperatures, verifier = ctx.cfg["eval"]["temperatures"], ctx.plan.task.verifier
    if not temperatures or verifier is None:
        return None
    found = {}
    for t in sorted({float(t) for t in temperatures}):
        scores = sample_and_score(
            bc_policy,
            ctx.tokenizer,
            verifier,
            ctx.data.validation,
            ctx.cfg["eval"]["num_samples"],
            max_new_tokens=ctx.data.max_completion_length,
            batch_size=ctx.cfg["eval"]["batch_size"],
            seed=ctx.seed("temperature"),
            desc=f"BC at T={t:g} (validation)",
            bf16=ctx.plan.sample_bf16,
            temperature=t,
        )[2]
        found[t] = float(scores.mean())
    best = max(found.values())
    return {
        "temperature": min(t for t, v in found.items() if v == best),
        "validation_success": {f"{t:g}": v for t, v in found.items()},
    }


def reward_diagnostics(ctx: Context, bc: str, bc_policy, final_reward) -> dict:
    """The learned reward as a reranker of ``eval.rerank_samples`` samples of ``bc_policy`` per held-out prompt
    (``evaluation.rerank``: best-of-n success against a random pick, AUC against the verifier), as reward pretraining
    left it (loaded here) and as the online-IRL arm left it (``final_reward``, the evaluation's). Empty without a
    verifier or an online-IRL arm."""
    plan = ctx.plan
    n = ctx.cfg["eval"]["rerank_samples"]
    rewards_at = {
        "reward_pretrain": plan.final_dir("reward_pretrain"),
        plan.algo: ctx.out / plan.algo / "final_reward",
    }
    rewards_at = {name: folder for name, folder in rewards_at.items() if folder.exists()}
    if not n or plan.task.verifier is None or plan.algo not in plan.arms or not rewards_at:
        return {}
    heldout, batch = ctx.data.heldout, ctx.cfg["eval"]["batch_size"]
    prompts, samples, scores = sample_and_score(
        bc_policy,
        ctx.tokenizer,
        plan.task.verifier,
        heldout,
        n,
        max_new_tokens=ctx.data.max_completion_length,
        batch_size=batch,
        seed=ctx.seed("rerank"),
        desc="BC samples to rerank",
        bf16=plan.sample_bf16,
    )
    out = {}
    for name, folder in rewards_at.items():
        policy, reward = (
            (None, final_reward)
            if name == plan.algo
            else ctx.roles.evaluation_models(bc, folder, plan.objective.model_kind)
        )
        reads = None  # AIRL's reward reads log pi of the policy it was trained beside
        if plan.objective.needs_policy:
            reads = policy if name == "reward_pretrain" else ctx.roles.load_policy(str(plan.final_dir(plan.algo)))
        with cpu_autocast(plan.sample_bf16):
            rewards = plan.objective.rewards(reward, ctx.tokenizer, prompts, samples, reads, batch)
        out[name] = rerank(scores, rewards.float().cpu().numpy().reshape(len(heldout), n), seed=ctx.cfg["seed"])
        del policy, reward, reads
        release_memory()
    return out
