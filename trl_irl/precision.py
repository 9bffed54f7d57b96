"""bf16 autocast: bf16 matmuls, fp32 master weights (AdamW's 1e-5 updates vanish in bf16 weights, so the weights
never are). ``model.bf16`` chooses it:

    auto    a GPU: TRL's default (bf16 where the GPU has it); a CPU: fp32
    true    on; a CPU without bf16 instructions (avx512_bf16 or AMX) runs fp32 instead and says so once (there bf16
            would be emulated, slower than fp32)
    false   fp32 everywhere

On CPU it is opt-in because it changes results, not only speed: on SmolLM2 at the recipe's BC learning rate the
first two BC losses agree with fp32's within 2.5% and then the runs part (fp32 with 1 or 2 threads agrees to 4
digits), and the held-out success of the recipe's BC moved from 0.39 to 0.50 at one seed (docs/online_irl_speed.md).
Where it is on, on CPU: TRL's trainers (``bf16=True``: their forward and backward under accelerate's autocast), the
policy's generation inside our trainers (TRL does not autocast ``generate``), the online reward model's scoring and
updates, and the pipeline's own sampling and reward scoring; the evaluation's log-probabilities and KL stay fp32.
"""

from __future__ import annotations

import contextlib

import torch

SETTINGS = ("auto", True, False)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matmuls (AVX512-BF16 or AMX), as PyTorch's oneDNN sees them."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_bf16(setting, use_cpu: bool) -> tuple[bool | None, str | None]:
    """``model.bf16`` -> (the ``bf16`` of every TRL config: None leaves TRL's GPU default, a note to print once or
    None). Raises on a bad value before any model loads."""
    if setting not in SETTINGS or isinstance(setting, int) and not isinstance(setting, bool):
        raise ValueError(f"model.bf16={setting!r}: choose auto, true or false")
    if not use_cpu:
        return (None if setting == "auto" else setting), None
    if setting is not True:  # auto and false: fp32 on CPU
        return False, None
    if cpu_has_bf16():
        return True, None
    return False, (
        "model.bf16=true: this CPU has no bf16 instructions (avx512_bf16 or AMX), so bf16 would be "
        "emulated and slower; running in fp32"
    )


def cpu_autocast(enabled: bool, device: torch.device | str = "cpu"):
    """bf16 autocast on CPU when ``enabled``; a no-op elsewhere (a GPU's precision is TRL's and the quant group's)."""
    if enabled and torch.device(device).type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
