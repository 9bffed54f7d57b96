"""Generic batch helpers shared by the reward models, the critic and the trainers: inputs that skip left padding,
a function computed a few rows at a time, a TRL generation batch as one sequence batch, gradients averaged across
processes."""

from __future__ import annotations

import torch
import torch.distributed as dist


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position ids that skip left padding (TRL left-pads prompts)."""
    position_ids = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "position_ids": position_ids}


def check_batch_size(size: int | None):
    if size is not None and size < 1:
        raise ValueError(f"a scoring batch size must be >= 1 (or None: the whole batch at once), got {size}")


def by_rows(fn, batch: dict[str, torch.Tensor], size: int | None):
    """``fn(batch)`` computed ``size`` rows at a time and concatenated along rows (a tensor, or a tuple of them): the
    result of one call with one chunk's activations alive at once, as TRL scores log-probs per micro-batch. ``None``
    (or a size of at least the batch) is one call. Every value of ``batch`` must have the batch's rows."""
    check_batch_size(size)
    n = next(iter(batch.values())).size(0)
    if size is None or size >= n:
        return fn(batch)
    parts = [fn({k: v[i : i + size] for k, v in batch.items()}) for i in range(0, n, size)]
    return tuple(map(torch.cat, zip(*parts))) if isinstance(parts[0], tuple) else torch.cat(parts)


def prompt_completion_batch(output: dict) -> dict[str, torch.Tensor]:
    """Prompt + completion ids of a TRL generation batch (left-padded prompts, right-padded completions) as one
    batch for another model (reward model, critic), with a completion mask."""
    prompt_mask, completion_mask = output["prompt_mask"], output["completion_mask"]
    return {
        "input_ids": torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1),
        "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
        "completion_mask": torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1),
    }


def all_reduce_mean_(tensors: list[torch.Tensor]):
    """Average tensors in place across processes; a no-op in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
