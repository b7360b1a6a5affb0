"""Inference helpers shared by label scoring and generation: eval mode, length-sorted batches, left padding."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then back in the mode it was in (training, mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (little padding; out-of-memory shows early)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(
    sequences: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` padded on the left to the longest sequence, and the matching `attention_mask` (1 on real tokens)."""
    if any(len(sequence) == 0 for sequence in sequences):
        raise ValueError("cannot pad an empty sequence")
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, width - len(sequence) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row gets the same positions as it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
