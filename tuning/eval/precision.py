"""Which precision inference computes in and how many reviews a pass may take, from the memory at hand.

Sizes come from the checkpoint's headers and config (tuning.model.files), never from loading: a model that fits in
no precision is refused before any weight is read.
"""

from dataclasses import dataclass

import torch

from tuning.runtime.devices import Device, compute_dtype
from tuning.runtime.errors import DataError
from tuning.runtime.memory import Room

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GIB = 1 << 30
FIXED_MARGIN = 2 * GIB  # libraries, tokenizer and the process itself, beside the weights


def dtype_flag_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def needed_bytes(parameters: int, dtype: torch.dtype) -> int:
    """The weights in `dtype` plus a working margin: a tenth of them for activations, and FIXED_MARGIN."""
    weights = parameters * dtype.itemsize
    return weights + weights // 10 + FIXED_MARGIN


@dataclass(frozen=True)
class Choice:
    dtype: torch.dtype
    note: str | None  # why auto did not take its first choice


def _candidates(requested: str, device: Device) -> list[torch.dtype]:
    """What `--dtype` allows, best first: auto is bf16 where the card has it natively, else fp16; on the CPU fp32,
    else bf16 (so that CPU results compare between machines whenever fp32 fits)."""
    if requested == "auto":
        if device.kind == "cpu":
            return [torch.float32, torch.bfloat16]
        return [compute_dtype(device, want_bf16=True, want_fp16=True)]
    if requested == "bf16" and device.kind != "cpu" and not device.bf16:
        raise DataError(f"--dtype bf16: this {device.kind} device has no native bf16; use --dtype fp16 or auto")
    return [DTYPES[requested]]


def choose_dtype(requested: str, device: Device, parameters: int, room: Room | None, what: str) -> Choice:
    """The dtype for `--dtype requested` whose weights (`parameters` of them) and margin fit in `room`.

    `what` names the model(s) in messages. With no figure for the room, the first choice is taken.
    """
    candidates = _candidates(requested, device)
    if room is None:
        return Choice(candidates[0], None)
    for dtype in candidates:
        if needed_bytes(parameters, dtype) <= room.bytes:
            if dtype == candidates[0]:
                return Choice(dtype, None)
            first = candidates[0]
            return Choice(dtype, (
                f"{what} needs {gigabytes(needed_bytes(parameters, first))} in {dtype_flag_name(first)} (weights and "
                f"working margin) but {gigabytes(room.bytes)} is available ({room.source}): computing in "
                f"{dtype_flag_name(dtype)}, which needs {gigabytes(needed_bytes(parameters, dtype))}"
            ))
    smallest = candidates[-1]
    smaller = [name for name, dtype in DTYPES.items() if dtype.itemsize < smallest.itemsize
               and needed_bytes(parameters, dtype) <= room.bytes and (device.kind == "cpu" or name != "bf16"
                                                                       or device.bf16)]
    where = "this machine or its container limit" if device.kind == "cpu" else f"the {device.kind} card"
    advice = (f"use --dtype {smaller[0]}" if smaller
              else f"free memory, or use a machine with at least {gigabytes(needed_bytes(parameters, smallest))} "
                   f"available{'' if device.kind == 'cpu' else ' on its card'}")
    raise DataError(
        f"{what} needs {gigabytes(needed_bytes(parameters, smallest))} in {dtype_flag_name(smallest)} "
        f"({gigabytes(parameters * smallest.itemsize)} of weights plus a working margin) but only "
        f"{gigabytes(room.bytes)} is available on {where} ({room.source}); nothing was loaded; {advice}"
    )


def review_bytes(config, tokens: int, dtype: torch.dtype) -> int:
    """An upper estimate of one review's activations in a scoring or generation pass of `tokens` tokens: its KV
    cache over every layer, one layer's MLP and one layer's attention scores."""
    per_token = (2 * config.num_hidden_layers * config.hidden_size + 3 * config.intermediate_size
                 + config.num_attention_heads * tokens)
    return tokens * per_token * dtype.itemsize


def fitting_batch_size(
    requested: int, reviews: int, per_review: int, parameters: int, dtype: torch.dtype, room: Room | None
) -> tuple[int, str | None]:
    """`requested` cut to the number of reviews (no batch is larger anyway) and to what the room left beside the
    weights holds at `per_review` bytes each; and a note when memory cut it."""
    batch = min(requested, reviews)
    if room is None:
        return batch, None
    fits = max(1, (room.bytes - parameters * dtype.itemsize - FIXED_MARGIN) // per_review)
    if fits >= batch:
        return batch, None
    return fits, (f"--batch_size {requested} cut to {fits}: more reviews per pass would not fit beside the weights "
                  f"in the {gigabytes(room.bytes)} available ({room.source})")
