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
    """FLOPs to train on one token of a sequence of a given length: per non-embedding weight 2 forward and 2 for the
    input gradient, plus 2 for its own gradient where it trains (6 per weight in full fine-tuning, 4 per frozen
    weight of a LoRA run), plus attention.

    The attention term is 12 * layers * hidden * length (scores and weighted sum, forward and backward).
    Recomputation under gradient checkpointing is not counted, as MFU conventionally does not.
    """
    config = model.config
    embedding = model.get_input_embeddings().weight
    # Under ZeRO-3 a parameter's own storage is a shard; DeepSpeed keeps the full size as `ds_numel`.
    dense = [parameter for parameter in model.parameters() if parameter is not embedding]
    weights = sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in dense)
    trained = sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in dense if parameter.requires_grad)
    attention = 12 * config.num_hidden_layers * config.hidden_size
    return lambda length: 4 * weights + 2 * trained + attention * length


class StepMetricsCallback(TrainerCallback):
    """Step time, tokens/s and MFU over the optimizer steps between two logging steps (`pop_window`).

    The training steps themselves have no host synchronisation: the device is synchronised only where a window
    starts (the first step after a log) and where it ends (`pop_window`, at a logging step). A window's time is the
    wall time between the two, less evaluations and checkpoint saves that ran inside it. Tokens are the non-padding
    tokens of all processes, which the trainer counts on the device and passes to `pop_window`; MFU needs the
    device's peak from PEAK_BF16_TFLOPS.
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
        self._window_start: float | None = None
        self._last_step_end = 0.0
        self._outside_steps = 0.0
        self._steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self._window_start is None:
            self.synchronize()
            self._window_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._steps += 1
        self._last_step_end = time.perf_counter()

    def _leave_out_since_last_step(self) -> None:
        """An evaluation or a save ran inside the window: its time is no training step's."""
        if self._window_start is not None:
            now = time.perf_counter()
            self._outside_steps += now - self._last_step_end
            self._last_step_end = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._leave_out_since_last_step()

    def on_save(self, args, state, control, **kwargs):
        self._leave_out_since_last_step()

    def pop_window(self, tokens: int) -> dict[str, float]:
        """`step_time_s`, `tokens_per_s` and (on a listed device) `mfu` over the steps since the last call, in which
        all processes together trained on `tokens` non-padding tokens."""
        if not self._steps or self._window_start is None:
            return {}
        self.synchronize()
        seconds = time.perf_counter() - self._window_start - self._outside_steps
        steps = self._steps
        self._window_start, self._outside_steps, self._steps = None, 0.0, 0
        if seconds <= 0:
            return {}
        tokens_per_s = tokens / seconds
        metrics = {"step_time_s": seconds / steps, "tokens_per_s": tokens_per_s}
        if self.peak_flops:
            mean_length = tokens / (steps * self.sequences_per_step)
            achieved = tokens_per_s * self.flops_per_token(mean_length)
            metrics["mfu"] = achieved / (self.peak_flops * self.world_size)
        return metrics
