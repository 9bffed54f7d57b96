"""bf16 autocast on CPUs with bf16 instructions: bf16 matmuls, fp32 master weights (AdamW's 1e-5 updates vanish in
bf16 weights, so the weights never are). ``model.bf16`` chooses it:

    auto    on a CPU with avx512_bf16 or AMX: on; a CPU without them: off, said once (bf16 would be emulated, slower
            than fp32); a GPU: TRL's own default (bf16 where the GPU has it)
    true    on (refused on a CPU without bf16 instructions)
    false   fp32 everywhere

Where it applies on CPU: TRL's trainers (``bf16=True``: their forward and backward under accelerate's autocast), the
policy's generation inside our trainers (TRL does not autocast ``generate``), the online reward model's scoring and
updates, and the pipeline's own sampling and evaluation. Numerics: see ``tests/test_precision.py`` (the first 20
BC steps' losses agree with fp32's within 2%).
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
    if setting is False:
        return False, None
    if cpu_has_bf16():
        return True, None
    if setting is True:
        raise ValueError("model.bf16=true: this CPU has no bf16 instructions (avx512_bf16 or AMX), so bf16 would be "
                         "emulated and slower than fp32. Set model.bf16=auto (fp32 here) or false")
    return False, "bf16 autocast off: this CPU has no bf16 instructions (avx512_bf16 or AMX); running in fp32"


def cpu_autocast(enabled: bool, device: torch.device | str = "cpu"):
    """bf16 autocast on CPU when ``enabled``; a no-op elsewhere (a GPU's precision is TRL's and the quant group's)."""
    if enabled and torch.device(device).type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
