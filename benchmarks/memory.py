"""Peak memory and throughput of one training step: the 4-bit policy alone, every role its own model, and every role
on one 4-bit base.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py --quick --out benchmarks/results/memory_quick.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py --out benchmarks/results/memory.json      # CPU, full
    python benchmarks/memory.py --models qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-7b --out memory_gpu.json   # on a GPU
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py --models qwen2.5-7b --layers 1,2,3 --setups shared_base \
        --prompt-len 512 --completion-len 512 --steps 1 --repeats 1 --out memory_cpu_7b.json   # 7B by depth, CPU
    .venv/bin/python benchmarks/memory.py --combine policy_only.json shared_base.json --out both.json  # runs as one

Setups, each run in a fresh process (one setup's allocations and allocator state must not count for the next):

=============  ========================================================================================================
policy_only    the 4-bit base with a LoRA policy; TRL's GRPO step on a rule reward (reference = TRL's frozen adapter)
separate       our PPO step with every role its own model in the compute dtype: the policy (full fine-tuning), TRL's
               reference copy, the critic and the reward model (learning online), as PPO was run before LoRA
shared_base    our PPO step with policy, reference, critic and reward (learning online) on one 4-bit base (SharedBase)
=============  ========================================================================================================

Every setup: the same prompts (``--prompt-len`` random tokens), ``--completion-len`` new tokens (generation is forced to
full length, so every step processes the same tokens), micro-batch ``--batch`` completions (generated together: one
step is one micro-batch), gradient checkpointing, beta 0.05; the online reward step takes the qlora recipe's
(demonstration, sample) pairs. Models: ``tiny`` (the default task's model) and ``smollm2_135m`` (SmolLM2-135M-Instruct,
see conf/model/smollm2_135m.yaml) with their real weights; ``qwen2.5-{0.5b,1.5b,7b}`` and ``random-tiny`` built
randomly from Qwen2.5-shaped configs (weights change neither memory nor speed), for a GPU, at the micro-batches of
their qlora recipes. ``--layers 1,2,3`` builds a shape with that many decoder layers instead, and reads the peak at
full depth off a line through them (``"extrapolated"`` in ``--out``): a 7B-shaped step measured on a CPU; with lines for
two setups their full-depth ratio too. ``--combine`` takes the rows of runs made with the same flags (a setup or a
depth each: a 7B depth takes an hour on one CPU thread) and reports them as one run.

peak_mem_mb: on CPU the peak resident memory (``VmHWM``) of the training steps above the process's resident memory
after imports and before any model is loaded; on a GPU ``torch.cuda.max_memory_allocated``, loading included. On CPU
two things would count that a step does not need, so they are removed before the steps start: the pages of the mapped
weights file (weights are copied out of it) and glibc's freed heap (``malloc_trim``); and by default
(``--cpu-malloc live``) freed blocks of 1 MiB or more go back to the system at once, so the peak follows live memory
as on a GPU (glibc otherwise keeps them: SmolLM2's shared-base ratio reads 1.41x instead of 1.20x, from heap that
holds freed tensors). Loading's own CPU peak (the full-precision weights before quantisation) is
``load_peak_mem_mb``. On a GPU ``reserved_peak_mem_mb`` is the caching allocator's peak during the steps (allocated
bytes plus its slack: what a smaller card must hold). ``--out`` is rewritten after every setup (``"complete": false``
until the last), so a run cut off at a time limit keeps what it measured; ``benchmarks/gpu/run.sh`` runs the GPU rows
on a lent machine.
tokens_per_s: completion tokens of a step (batch x completion length) per second of step time, median over the
measured steps (the first step, a warm-up, is not counted). A setup that runs out of GPU memory gets ``"oom": true``
(its peak, and so its ratio, is then a lower bound).
With ``--repeats`` > 1 every figure is the median over repeats. Goal: shared_base <= 1.3x policy_only's peak; separate
>= 4x; a 7B step <= 20 GB at seq 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("policy_only", "separate", "shared_base")
ROW_TAG = "MEMORY_ROW "
QUANT = {"mode": "4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
# Qwen2.5 shapes (config.json of the released models); "random-tiny" takes the same path at test size
QWEN = {
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "random-tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
}
# CPU allocator settings per --cpu-malloc (read by glibc when a process starts, so set for the child processes)
CPU_MALLOC = {"live": {"MALLOC_MMAP_THRESHOLD_": str(2**20)}, "default": {}}


def recipe_batches(model: str) -> tuple[int, int]:
    """(completions per micro-batch, demonstration-sample pairs per reward step) of the qlora recipes for a Qwen2.5
    shape (recipes/qlora/parts/size_<size>.yaml); 4 and 2 for the CPU models."""
    if model not in QWEN or model == "random-tiny":
        return 4, 2
    from omegaconf import OmegaConf

    size = OmegaConf.load(ROOT / "recipes" / "qlora" / "parts" / f"size_{model.split('-')[-1]}.yaml")
    return size.algo.per_device_train_batch_size, size.reward.online.batch_size


# --- models (built once per run, by a process of their own) -----------------------------------------------------
def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries (``t3``, ``t4``, ...): any sampled id decodes and
    re-encodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trl_irl.models import EOS, PAD, UNK

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK])} | {f"t{i}": i for i in range(3, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def prepare(name: str, directory: Path, layers: int | None = None) -> str:
    """A folder with the model's weights and tokenizer; random models in bf16 (so 7B fits on disk and in RAM), with
    ``layers`` decoder layers instead of the shape's own number when given."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from trl_irl.models import build_char_tokenizer, build_tiny_causal_lm, export_smollm2, save_model
    from trl_irl.tasks import AutomatonTask

    if name == "tiny":
        tokenizer = build_char_tokenizer(AutomatonTask().alphabet)
        return save_model(build_tiny_causal_lm(tokenizer, 64, 2, 4, 128, 512, seed=0), tokenizer, directory)
    if name == "smollm2_135m":
        return export_smollm2(os.environ.get("TRL_IRL_SMOLLM2", "~/.cache/trl_irl/models/smollm2_135m"))
    if name not in QWEN:
        raise ValueError(f"unknown model {name!r}: choose from tiny, smollm2_135m, {', '.join(QWEN)}")
    tokenizer = word_tokenizer(QWEN[name]["vocab_size"])
    shape = QWEN[name] | ({"num_hidden_layers": layers} if layers else {})
    config = Qwen2Config(
        **shape,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return save_model(model, tokenizer, directory)


# --- one setup, in a child process ------------------------------------------------------------------------------
def peak_bytes() -> int:
    """The high-water mark since the last ``reset_peak``: GPU tensor memory, or the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current resident size


def own_weights():
    """CPU: copy into private memory every floating weight of every loaded model, then hand freed heap back to the OS.

    Weights that keep their file's dtype are views of the mmapped safetensors file, whose pages (clean, dropped by the
    kernel under pressure, never on a GPU) count in the resident size: 440 MB of SmolLM2's 4-bit policy alone, which
    flattered every ratio over it. Loading also leaves freed full-precision weights (quantised since) in glibc's heap.
    """
    import ctypes
    import gc

    import torch

    seen = set()
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Module):
            for tensor in [*obj.parameters(recurse=False), *obj.buffers(recurse=False)]:
                if id(tensor) not in seen and tensor.is_floating_point() and tensor.device.type == "cpu":
                    seen.add(id(tensor))
                    tensor.data = tensor.data.clone()  # the same object: tied weights stay tied
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_setup(model: str, setup: str, path: str, opts) -> dict:
    import psutil
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_irl.models import compute_dtype, contiguous_lm_head_input
    from trl_irl.plan import load_tokenizer
    from trl_irl.shared_base import CRITIC, REWARD, SharedBase
    from trl_irl.trainers import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    quant = QUANT | {"compute_dtype": opts.dtype}
    bf16 = compute_dtype(quant) == torch.bfloat16  # mixed precision as the GPU runs it (bf16 on CPU: --dtype bfloat16)
    baseline = 0 if cuda else psutil.Process().memory_info().rss  # after imports, before any model
    reset_peak()

    if model in QWEN:  # random models: their word-level tokenizer as saved (AutoTokenizer would pick Qwen2's class)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, trust_remote_code=False)
    else:  # a pad of its own, not EOS, as the CLI gives a model folder (SmolLM2 pads with EOS)
        _, tokenizer, _ = load_tokenizer({"path": path})
    special = len(tokenizer.all_special_ids)
    generator = torch.Generator().manual_seed(0)

    def text(n):  # random tokens, decoded: the prompt and demonstration texts
        return tokenizer.decode(
            torch.randint(special, len(tokenizer), (n,), generator=generator), skip_special_tokens=True
        )

    B, C = opts.batch, opts.completion_len
    dataset = Dataset.from_list([{"prompt": text(opts.prompt_len), "demonstration": text(C)} for _ in range(64)])
    out = tempfile.mkdtemp()
    common = dict(
        output_dir=out,
        per_device_train_batch_size=B,
        num_generations=min(B, 4),
        max_completion_length=C,
        generation_batch_size=opts.generation_batch or B,
        max_steps=1 + opts.steps,
        learning_rate=1e-5,
        beta=0.05,
        gradient_checkpointing=True,
        use_cpu=not cuda,
        bf16=bf16,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        seed=0,
        generation_kwargs={"min_new_tokens": C},
    )
    online = dict(reward_update_every=1, reward_update_steps=1, reward_batch_size=opts.reward_batch, objective="bt")

    def build():
        if setup == "policy_only":
            shared = SharedBase(path, LORA, quant, roles=())
            return GRPOTrainer(
                model=shared.model,
                reward_funcs=[lambda completions, **_: [float(len(c)) for c in completions]],
                args=GRPOConfig(**common),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
        if setup == "shared_base":
            shared = SharedBase(path, LORA, quant, roles=(REWARD, CRITIC))
            return PPOTrainer(
                model=shared.model,
                reward_model=shared.role(REWARD, "classifier"),
                critic=shared.role(CRITIC, "token"),
                args=PPOConfig(**common, **online),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
        dtype = compute_dtype(quant)  # separate: full models in the compute dtype
        reward = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, trust_remote_code=False
        )
        reward.config.pad_token_id = tokenizer.pad_token_id
        return PPOTrainer(
            model=path,
            reward_model=reward,
            train_dataset=dataset,
            processing_class=tokenizer,
            args=PPOConfig(**common, **online, model_init_kwargs={"dtype": dtype}),
        )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            torch.cuda.synchronize() if cuda else None
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            torch.cuda.synchronize() if cuda else None
            self.times.append(time.perf_counter() - self.start)

    mb = lambda n: round((n - baseline) / 2**20, 1)  # noqa: E731
    row = {
        "model": model,
        "setup": setup,
        "layers": json.loads(Path(path, "config.json").read_text())["num_hidden_layers"],
        "compute_dtype": str(compute_dtype(quant)).split(".")[-1],
        "oom": False,
        "policy_trainable_parameters": None,
    }
    timer = StepTimer()
    try:
        trainer = build()
        trainer.add_callback(timer)
        contiguous_lm_head_input(trainer.model)  # policy_only runs TRL's plain GRPOTrainer (pytorch#151934)
        row["policy_trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        row["load_peak_mem_mb"] = mb(peak_bytes())
        if not cuda:
            own_weights()
        reset_peak()  # the training steps' own peak, apart from loading (which can peak higher on CPU)
        row["loaded_mem_mb"] = mb(psutil.Process().memory_info().rss if not cuda else torch.cuda.memory_allocated())
        trainer.train()
    except torch.cuda.OutOfMemoryError:  # a finding on a GPU (the separate setup at 7B), not a failure
        row["oom"] = True
    row["train_peak_mem_mb"] = mb(peak_bytes())
    if cuda:  # what a smaller card must hold: allocated bytes plus the caching allocator's slack
        row["reserved_peak_mem_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    # on CPU loading peaks on the mapped file and full-precision weights before quantisation: not the step's need
    row["peak_mem_mb"] = (
        row["train_peak_mem_mb"] if not cuda else max(row.get("load_peak_mem_mb", 0.0), row["train_peak_mem_mb"])
    )
    measured = timer.times[1:]
    # a generation batch of several micro-batches: only the first step generates, so a step's time is not comparable
    timed = measured and not row["oom"] and (opts.generation_batch or B) == B
    row["tokens_per_s"] = round(B * C / statistics.median(measured), 2) if timed else None
    row["seconds_per_step"] = round(statistics.median(measured), 3) if measured else None
    return row


# --- the run ----------------------------------------------------------------------------------------------------
def child(args: list[str], env: dict | None = None) -> dict:
    """Run this file again in a fresh process; returns the row it printed (raises with its stderr on failure)."""
    result = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    rows = [json.loads(line[len(ROW_TAG) :]) for line in result.stdout.splitlines() if line.startswith(ROW_TAG)]
    if result.returncode != 0 or not rows:
        raise RuntimeError(f"benchmarks/memory.py {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return rows[0]


def median_row(rows: list[dict]) -> dict:
    row = dict(rows[0])
    for key in (
        "peak_mem_mb",
        "load_peak_mem_mb",
        "loaded_mem_mb",
        "train_peak_mem_mb",
        "reserved_peak_mem_mb",
        "tokens_per_s",
        "seconds_per_step",
    ):
        values = [r.get(key) for r in rows if r.get(key) is not None]
        row[key] = round(statistics.median(values), 2) if values else None
    row["oom"] = any(r["oom"] for r in rows)
    row["repeats"] = len(rows)
    return row


def full_depth(model: str) -> int | None:
    return QWEN[model]["num_hidden_layers"] if model in QWEN else None


def extrapolate(rows: list[dict]) -> list[dict]:
    """Peak memory at a model's full depth from rows measured with fewer decoder layers (``--layers``).

    With gradient checkpointing every part of a step's memory is either per layer (4-bit weights, LoRA weights, their
    gradients and Adam moments, the checkpointed layer inputs, the KV cache) or once per model (embeddings, the head,
    logits, one layer's recomputed activations), so the peak is ``a + b * layers``: a least-squares line through the
    measured depths, read at the full depth. ``max_residual_mb`` is how far the measured points are off the line (the
    check that the peak stays in the same phase across depths; it needs three depths). A full-depth row, when measured
    too, is not fitted but set beside the prediction (``measured_peak_mem_mb``): the method's check on a model that
    fits.
    """
    fits = []
    for model, setup in dict.fromkeys((r["model"], r["setup"]) for r in rows):
        full = full_depth(model)
        points = sorted(
            (r["layers"], r["peak_mem_mb"])
            for r in rows
            if (r["model"], r["setup"]) == (model, setup)
            and r.get("layers") is not None
            and r["peak_mem_mb"] is not None
            and not r["oom"]
        )
        measured = next((y for x, y in points if x == full), None)
        points = [(x, y) for x, y in points if x != full]
        if len({x for x, _ in points}) < 2 or full is None:
            continue
        slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
        fits.append(
            {
                "model": model,
                "setup": setup,
                "layers_measured": [x for x, _ in points],
                "full_layers": full,
                "mb_per_layer": round(slope, 1),
                "mb_at_0_layers": round(intercept, 1),
                "peak_mem_mb": round(intercept + slope * full, 1),
                "max_residual_mb": round(max(abs(y - intercept - slope * x) for x, y in points), 1),
            }
            | ({"measured_peak_mem_mb": measured} if measured is not None else {})
        )
    return fits


# the ratio goals: setup -> (goal name, test of its peak over policy_only's)
RATIO_GOALS = {
    "shared_base": ("shared_base_le_1.3x", lambda ratio: ratio <= 1.3),
    "separate": ("separate_ge_4x", lambda ratio: ratio >= 4.0),
}


def add_ratios(rows: list[dict], fits: list[dict] = ()) -> dict:
    """Each row's peak over the policy_only peak of its model at its depth; and the goal checks (the 7B one from a
    full-depth row, else from the extrapolated peak, marked so)."""
    key = lambda r: (r["model"], r.get("layers"))  # noqa: E731
    base = {key(r): r["peak_mem_mb"] for r in rows if r["setup"] == "policy_only"}
    for r in rows:
        if base.get(key(r)) and r["peak_mem_mb"] is not None:
            r["peak_vs_policy_only"] = round(r["peak_mem_mb"] / base[key(r)], 2)
    ratio = {(*key(r), r["setup"]): r.get("peak_vs_policy_only") for r in rows}
    goals = {}
    for model, layers in base:
        name = model if layers in (None, full_depth(model)) else f"{model}/{layers}-layers"
        goals[name] = {
            goal: None if (r := ratio.get((model, layers, setup))) is None else passes(r)
            for setup, (goal, passes) in RATIO_GOALS.items()
        }
    for model in dict.fromkeys(r["model"] for r in rows):
        if model.endswith("7b"):  # the 7B-shaped PPO step within 20 GB (on a GPU, at the default 512 + 512 tokens)
            row = next(
                (
                    r
                    for r in rows
                    if r["model"] == model and r["setup"] == "shared_base" and r.get("layers") == full_depth(model)
                ),
                None,
            )
            fit = next((f for f in fits if f["model"] == model and f["setup"] == "shared_base"), None)
            goal = goals.setdefault(model, {})
            if row is not None:
                goal["shared_base_step_le_20gb"] = None if row["oom"] else row["peak_mem_mb"] <= 20 * 1024
            elif fit is not None:
                goal["shared_base_step_le_20gb_extrapolated"] = fit["peak_mem_mb"] <= 20 * 1024
    # the ratio goals at full depth from the lines, where no full-depth policy_only row was measured
    line = {(f["model"], f["setup"]): f for f in fits}
    for (model, setup), fit in line.items():
        policy = line.get((model, "policy_only"))
        if setup not in RATIO_GOALS or policy is None or (model, full_depth(model)) in base:
            continue
        fit["peak_vs_policy_only"] = round(fit["peak_mem_mb"] / policy["peak_mem_mb"], 2)
        goal, passes = RATIO_GOALS[setup]
        goals.setdefault(model, {})[goal + "_extrapolated"] = passes(fit["peak_vs_policy_only"])
    return goals


# what must agree between rows measured in different runs for their peaks to be compared (--combine)
SETTINGS = (
    "prompt_len",
    "completion_len",
    "batch",
    "generation_batch",
    "reward_batch_pairs",
    "steps",
    "compute_dtype",
    "device",
    "cpu_malloc",
)


def combine(paths: list[str]) -> list[dict]:
    """The rows of several ``--out`` files as one run's: a 7B depth takes an hour on CPU, so setups are measured in
    separate runs. Refused (ValueError) when the files measured a (model, setup, depth) twice or with different
    settings."""
    rows, seen, first = [], {}, None
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            r = {k: v for k, v in r.items() if k != "peak_vs_policy_only"}  # recomputed over all the rows
            r.setdefault("generation_batch", r.get("batch"))  # files from before --generation-batch
            settings = {k: r.get(k) for k in SETTINGS}
            first = first or settings
            if settings != first:
                diff = {k: (first[k], settings[k]) for k in SETTINGS if first[k] != settings[k]}
                raise ValueError(
                    f"--combine: {path} was measured with other settings than {paths[0]}: {diff}; "
                    "combine only runs made with the same flags"
                )
            key = (r["model"], r["setup"], r.get("layers"))
            if key in seen:
                raise ValueError(f"--combine: {key} is in both {seen[key]} and {path}; keep one of them")
            seen[key] = path
            rows.append(r)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 measured step, short sequences, 1 repeat")
    parser.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    parser.add_argument(
        "--models", default=None, help="comma-separated; default tiny,smollm2_135m (CPU) or the Qwen2.5 shapes (GPU)"
    )
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (CPU 32, GPU 512; quick 16)")
    parser.add_argument("--completion-len", type=int, default=None, help="new tokens (CPU 96, GPU 512; quick 32)")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="completions per step (CPU models 4; Qwen2.5 shapes as "
        "their qlora recipes); the online reward step takes half as many (demonstration, sample) pairs",
    )
    parser.add_argument("--reward-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--generation-batch",
        type=int,
        default=None,
        help="completions generated at once (then scored --batch at a time), a multiple of --batch "
        "(default: --batch); the qlora recipes generate per_device_train_batch_size x "
        "gradient_accumulation_steps (4) at once. Then only the first step generates: tokens/s "
        "is not reported",
    )
    parser.add_argument("--steps", type=int, default=None, help="measured steps after one warm-up (quick 1, else 3)")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per setup (quick or GPU 1, else 3)")
    parser.add_argument(
        "--cpu-malloc",
        choices=CPU_MALLOC,
        default="live",
        help="CPU only. live: glibc's mmap threshold fixed at 1 MiB, so a freed tensor leaves the "
        "resident size and its peak follows live memory (as max_memory_allocated on a GPU), at "
        "some speed; default: glibc as it comes, whose heap also keeps freed memory",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated decoder-layer counts for the Qwen2.5 shapes "
        "(default: the shape's own): the peak at full depth is then extrapolated from a line through "
        "them, for a 7B-shaped step on a machine too small or slow for 28 layers",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="compute dtype (auto: bfloat16 on a GPU, float32 on CPU); bfloat16 also turns on bf16 "
        "mixed precision, as on a GPU",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="FILE",
        default=None,
        help="no run: the rows of these --out files (same flags, different setups or depths) as one "
        "run's, with ratios, lines and goals over all of them, written to --out",
    )
    parser.add_argument("--workdir", default=None, help="where model folders are built (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SETUP", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=3, metavar=("MODEL", "DIR", "LAYERS"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.prepare:
        model, directory, layers = opts.prepare
        print(ROW_TAG + json.dumps({"path": prepare(model, Path(directory), int(layers) or None)}))
        return
    if opts.child:
        print(ROW_TAG + json.dumps(run_setup(*opts.child, opts)), flush=True)
        return
    if opts.combine:
        try:
            rows = combine(opts.combine)
        except (OSError, KeyError, ValueError) as error:
            parser.error(str(error))
        return report(rows, opts.out, "python benchmarks/memory.py --combine " + " ".join(opts.combine), final=True)

    import torch

    gpu = torch.cuda.is_available()
    models = (opts.models or ("qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-7b" if gpu else "tiny,smollm2_135m")).split(",")
    setups = opts.setups.split(",")
    for s in setups:
        if s not in SETUPS:
            parser.error(f"--setups: {s!r} is unknown, choose from {SETUPS}")
    for m in models:
        if m not in ("tiny", "smollm2_135m", *QWEN):
            parser.error(f"--models: {m!r} is unknown, choose from tiny, smollm2_135m, {', '.join(QWEN)}")
    try:
        depths = [int(n) for n in opts.layers.split(",")] if opts.layers else [0]  # 0: the model's own depth
    except ValueError:
        parser.error(f"--layers: {opts.layers!r} is not a comma-separated list of layer counts, e.g. --layers 1,2,4")
    if opts.layers and (min(depths) < 1 or any(m not in QWEN for m in models)):
        parser.error("--layers: counts >= 1, for the Qwen2.5 shapes only (the other models have real weights)")
    sizes = {
        "prompt_len": opts.prompt_len or (16 if opts.quick else 512 if gpu else 32),
        "completion_len": opts.completion_len or (32 if opts.quick else 512 if gpu else 96),
        "steps": opts.steps or (1 if opts.quick else 3),
    }
    repeats = opts.repeats or (1 if opts.quick or gpu else 3)  # a GPU's allocated bytes do not vary between runs
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="trl_irl_memory_"))
    env = None if gpu else CPU_MALLOC[opts.cpu_malloc]
    device = {"device": "cuda"} if gpu else {"device": "cpu", "cpu_malloc": opts.cpu_malloc}
    command = "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []

    def write(final: bool):  # after every setup too: a run cut off at a time limit keeps the rows it measured
        return report(rows, opts.out, command, final, quiet=not final)

    batches = {m: (opts.batch, max(1, opts.batch // 2)) if opts.batch else recipe_batches(m) for m in models}
    for m, (batch, _) in batches.items():
        if opts.generation_batch and opts.generation_batch % batch:
            parser.error(
                f"--generation-batch: {opts.generation_batch} is not a multiple of {m}'s micro-batch "
                f"({batch}); use e.g. {4 * batch}, as the qlora recipes (4 micro-batches per generation)"
            )
    for model in models:
        batch, reward_batch = batches[model]
        for layers in depths:
            folder = workdir / (model if not layers else f"{model}-{layers}-layers")
            path = child(["--prepare", model, str(folder), str(layers)])["path"]
            flags = [
                f"--prompt-len={sizes['prompt_len']}",
                f"--completion-len={sizes['completion_len']}",
                f"--batch={batch}",
                f"--reward-batch={reward_batch}",
                f"--steps={sizes['steps']}",
                f"--dtype={opts.dtype}",
            ] + ([f"--generation-batch={opts.generation_batch}"] if opts.generation_batch else [])
            for setup in setups:
                row = median_row([child(["--child", model, setup, path, *flags], env) for _ in range(repeats)])
                row |= {
                    "batch": batch,
                    "generation_batch": opts.generation_batch or batch,
                    "reward_batch_pairs": reward_batch,
                    **sizes,
                    **device,
                }
                rows.append(row)
                print(
                    f"{model:>14} {row['layers']:>3} layers {setup:>12}: peak {row['peak_mem_mb']} MB, "
                    f"{row['tokens_per_s']} tokens/s" + (" (out of memory)" if row["oom"] else ""),
                    flush=True,
                )
                write(final=False)
    return write(final=True)


def report(rows: list[dict], out: str | None, command: str, final: bool, quiet: bool = False) -> dict:
    """Ratios, lines and goals over ``rows``; written to ``out`` (when given) and, unless ``quiet``, printed."""
    fits = extrapolate(rows)
    result = {
        "rows": rows,
        "extrapolated": fits,
        "goals": add_ratios(rows, fits),
        "command": command,
        "complete": final,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    if quiet:
        return result
    for r in (r for r in rows if r.get("peak_vs_policy_only") is not None):
        print(
            f"{r['model']:>14} {r['layers']:>3} layers {r['setup']:>12}: {r['peak_vs_policy_only']}x policy_only's peak"
        )
    for f in fits:
        ratio = f" = {f['peak_vs_policy_only']}x policy_only's" if "peak_vs_policy_only" in f else ""
        print(
            f"{f['model']:>14} {f['full_layers']:>3} layers {f['setup']:>12}: {f['peak_mem_mb']} MB extrapolated "
            f"from {f['layers_measured']} layers ({f['mb_per_layer']} MB per layer){ratio}"
        )
    if out:
        if final and rows:
            plot(rows, Path(out).with_suffix(".png"))
        print(f"wrote {out}")
    return result


def plot(rows: list[dict], png: Path):
    """Peak memory per setup, one group of bars per model (and depth), the ratio to policy_only above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["layers"]) for r in rows))
    fig, ax = plt.subplots(figsize=(1.5 + 2.2 * len(groups), 3.6))
    width = 0.8 / len(SETUPS)
    for k, setup in enumerate(SETUPS):
        for g, (model, layers) in enumerate(groups):
            row = next((r for r in rows if (r["model"], r["layers"], r["setup"]) == (model, layers, setup)), None)
            if row is None:
                continue
            x = g + (k - (len(SETUPS) - 1) / 2) * width
            ax.bar(x, row["peak_mem_mb"] / 1024, width, color=f"C{k}", label=setup if g == 0 else None)
            if row.get("peak_vs_policy_only") is not None:
                ax.annotate(
                    f"{row['peak_vs_policy_only']}x",
                    (x, row["peak_mem_mb"] / 1024),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.set_xticks(range(len(groups)), [f"{m}\n{n} layers, {rows[0]['device']}" for m, n in groups])
    ax.set_ylabel("peak memory of a step (GB)")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
