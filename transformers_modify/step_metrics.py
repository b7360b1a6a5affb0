"""Per-step time, tokens/s and MFU for the Trainer (the original recipe timed steps in a patched trainer.py)."""

import time
from collections.abc import Callable

from torch import nn
from transformers import TrainerCallback

# Dense bf16 peak of one device in TFLOP/s, by a substring of the name the device reports; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("H200", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("910B", 354.0),  # Ascend 910B: torch.npu.get_device_name() says e.g. "Ascend910B2"
)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """FLOP/s of one device from PEAK_BF16_TFLOPS; None when the device is not listed."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if device_name and key in device_name:
            return tflops * 1e12
    return None


def training_flops_per_token(model: nn.Module) -> Callable[[float], float]:
    """FLOPs to train on one token of a sequence of a given length: 6 per non-embedding weight, plus attention.

    The attention term is 12 * layers * hidden * length (scores and weighted sum, forward and backward).
    Recomputation under gradient checkpointing is not counted, as MFU conventionally does not.
    """
    config = model.config
    embedding = model.get_input_embeddings().weight
    # Under ZeRO-3 a parameter's own storage is a shard; DeepSpeed keeps the full size as `ds_numel`.
    weights = sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in model.parameters())
    dense = weights - getattr(embedding, "ds_numel", embedding.numel())
    attention = 12 * config.num_hidden_layers * config.hidden_size
    return lambda length: 6 * dense + attention * length


class StepMetricsCallback(TrainerCallback):
    """Times each optimizer step (device synchronised); `pop_window()` gives the averages since the last call.

    Tokens are the non-padding tokens of all processes (`state.num_input_tokens_seen`, which needs
    `include_num_input_tokens_seen="non_padding"`); MFU needs the device's peak from PEAK_BF16_TFLOPS.
    """

    def __init__(
        self,
        synchronize: Callable[[], None],
        flops_per_token: Callable[[float], float],
        sequences_per_step: int,
        world_size: int,
        peak_flops: float | None,
    ):
        self.synchronize = synchronize  # waits for the device's queued work, so that times are real
        self.flops_per_token = flops_per_token
        self.sequences_per_step = sequences_per_step
        self.world_size = world_size
        self.peak_flops = peak_flops
        self._start = 0.0
        self._tokens_at_start = 0
        self._steps = 0
        self._seconds = 0.0
        self._tokens = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.synchronize()
        self._start = time.perf_counter()
        self._tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self.synchronize()
        self._seconds += time.perf_counter() - self._start
        self._tokens += state.num_input_tokens_seen - self._tokens_at_start
        self._steps += 1

    def pop_window(self) -> dict[str, float]:
        """`step_time_s`, `tokens_per_s` and (on a listed device) `mfu` over the steps since the last call."""
        if not self._steps or self._seconds <= 0:
            return {}
        tokens_per_s = self._tokens / self._seconds
        metrics = {"step_time_s": self._seconds / self._steps, "tokens_per_s": tokens_per_s}
        if self.peak_flops:
            mean_length = self._tokens / (self._steps * self.sequences_per_step)
            achieved = tokens_per_s * self.flops_per_token(mean_length)
            metrics["mfu"] = achieved / (self.peak_flops * self.world_size)
        self._steps, self._seconds, self._tokens = 0, 0.0, 0
        return metrics
