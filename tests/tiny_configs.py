"""The trainer config every tiny-model test starts from, so that a test names only the fields it is about."""

from pathlib import Path

# on CPU in float32, nothing reported, no progress bars, no checkpoints unless a test asks for them
QUIET_CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "disable_tqdm": True, "save_strategy": "no"}


def tiny_rl_config(config_cls, output_dir: str | Path, **fields):
    """``config_cls`` (a GRPOConfig or one of ours) for the tiny policy: 8 prompts a step in groups of 4, completions
    of at most 6 tokens, 2 steps at lr 1e-3, no KL term, quiet on CPU; ``fields`` set or change any field (TRL's
    default seed, 42, unless a test sets one)."""
    values = {
        **QUIET_CPU,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 6,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "beta": 0.0,
    }
    return config_cls(**{**values, **fields})
