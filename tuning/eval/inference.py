"""Where inference runs, in which dtype and with how much memory, and a model loaded for it: run_test.py, predict.py,
serve.py and the benchmarks."""

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tuning.eval.precision import choose_dtype, fitting_batch_size, review_bytes
from tuning.model.baichuan import BaichuanForCausalLM, attention_implementation, load_model
from tuning.model.files import checkpoint_shapes, parameter_count
from tuning.runtime.devices import Device, detect_device, free_memory_bytes, prepare_device
from tuning.runtime.distributed import note
from tuning.runtime.memory import Room, available_memory


@dataclass(frozen=True)
class InferenceSetup:
    device: Device
    dtype: torch.dtype
    parameters: int = 0  # the parameters held at once (the largest model, or the sum of those loaded together)
    room: Room | None = None  # memory this process could take before loading; None when unknown

    def describe(self) -> str:
        """e.g. "cuda, bfloat16"."""
        return f"{self.device.kind}, {self.dtype_name}"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def batch_size(self, requested: int, reviews: int, config, tokens: int) -> int:
        """`requested` cut to the number of reviews and to the memory left beside the weights for passes of up to
        `tokens` tokens of a model of `config`; a note on stderr says so when it is cut."""
        per_review = review_bytes(config, tokens, self.dtype)
        batch, why = fitting_batch_size(requested, reviews, per_review, self.parameters, self.dtype, self.room)
        if why:
            note(why)
        return batch


def memory_room(device: Device) -> Room | None:
    """What this process can still take: the host's memory on the CPU (cgroup limit, MemAvailable), else the card's."""
    if device.kind == "cpu":
        return available_memory()
    return Room(free_memory_bytes(device), "mem_get_info")


def inference_setup(dtype: str = "auto", model_dirs: Sequence[Path] = (), together: bool = False) -> InferenceSetup:
    """This process's device, set up, and the dtype `--dtype` asks for; with "auto" the best one in which the models
    fit (tuning.eval.precision). The models are held one at a time, or all `together`; a model too large for the
    memory at hand is a DataError here, before any weight is read."""
    device = detect_device()
    prepare_device(device)
    counts = {Path(folder): parameter_count(checkpoint_shapes(folder)) for folder in model_dirs}
    room = memory_room(device) if counts else None
    if together:
        parameters, what = sum(counts.values()), " and ".join(map(str, counts)) + " together"
    else:
        largest = max(counts, key=counts.get, default=None)
        parameters, what = counts.get(largest, 0), f"the model {largest}"
    choice = choose_dtype(dtype, device, parameters, room, what)
    if choice.note:
        note(choice.note)
    return InferenceSetup(device, choice.dtype, parameters, room)


def release_memory(device: Device) -> None:
    """Return the memory of models no longer referenced: collect reference cycles, empty the accelerator's cache."""
    gc.collect()
    if device.kind != "cpu":
        device.module().empty_cache()


def load_for_inference(model_dir: str | Path, device: Device, dtype: torch.dtype) -> BaichuanForCausalLM:
    """The model in `dtype` on `device`, with the fastest attention the device offers."""
    model = load_model(model_dir, dtype, attention_implementation(device, dtype), device)
    return model.to(device.torch_device())
