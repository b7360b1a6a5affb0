"""Where inference runs and in which dtype, and a model loaded for it: run_test.py, predict.py and the benchmarks."""

from dataclasses import dataclass
from pathlib import Path

import torch

from tuning.model.baichuan import BaichuanForCausalLM, attention_implementation, load_model
from tuning.runtime.devices import Device, compute_dtype, detect_device, prepare_device


@dataclass(frozen=True)
class InferenceSetup:
    device: Device
    dtype: torch.dtype

    def describe(self) -> str:
        """e.g. "cuda, bfloat16"."""
        return f"{self.device.kind}, {self.dtype_name}"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def inference_setup(fp32: bool = False) -> InferenceSetup:
    """This process's device, set up, and the dtype it computes in: bf16 where native (unless `fp32`), else fp32."""
    device = detect_device()
    prepare_device(device)
    return InferenceSetup(device, compute_dtype(device, want_bf16=not fp32))


def load_for_inference(model_dir: str | Path, device: Device, dtype: torch.dtype) -> BaichuanForCausalLM:
    """The model in `dtype` on `device`, with the fastest attention the device offers."""
    model = load_model(model_dir, dtype, attention_implementation(device, dtype), device)
    return model.to(device.torch_device())
