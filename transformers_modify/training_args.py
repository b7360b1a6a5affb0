"""Precision and device adjustments of TrainingArguments per device kind, before transformers validates them.

The original recipe patched transformers' training_args.py so that its bf16/fp16 checks accepted the NPU.
transformers 5.24 detects NPU bf16 itself; what is still needed here:
- bf16 on an accelerator without native bf16 (V100, T4): training switches to fp16 with DeepSpeed's dynamic loss
  scaling, with a note;
- bf16 on the CPU: training runs in fp32, with a note, on every CPU (emulated bf16 is ~60x slower where there are
  no bf16 instructions, and one precision keeps CPU runs comparable between machines, as predict.py and run_test.py
  also score in fp32 there); `WAIMAI_CPU_BF16=1` keeps bf16 on the CPU anyway;
- torch_npu's fused AdamW (`adamw_torch_npu_fused`) is refused: it reads the gradients only on its first step, which
  breaks under DeepSpeed ZeRO and in the Trainer's own loop (docs/hardware.md); the recipes' `adamw_torch_fused` is
  torch's fused AdamW on every device (torch_npu runs its kernel on the NPU);
- `--tf32` exists on NVIDIA GPUs only: elsewhere it is dropped with a note instead of stopping the run;
- the CPU: `use_cpu` (transformers then accepts bf16 there) and, for DeepSpeed, a gloo process group, which
  accelerate 1.15 does not set up on a machine without accelerators (each rank would run as a world of one).
"""

import json
import os

from accelerate import PartialState

FORCE_CPU_BF16 = "WAIMAI_CPU_BF16"
NPU_FUSED_ADAMW = "adamw_torch_npu_fused"
SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "29500"}


def adapt_to_device(values: dict, device_kind: str, native_bf16: bool) -> list[str]:
    """Adjust TrainingArguments keyword `values` in place for the device; returns notes for the user.

    Raises ValueError for a precision the device cannot run.
    """
    notes = []
    if values.get("fp16") and values.get("bf16"):
        raise ValueError("--fp16 and --bf16 exclude each other")
    if values.get("bf16") and device_kind == "cpu":
        if os.environ.get(FORCE_CPU_BF16) == "1":
            if not native_bf16:
                notes.append(f"{FORCE_CPU_BF16}=1: bf16 on a CPU without native bf16 is emulated and very slow")
        else:
            values["bf16"] = False
            notes.append("on the CPU: training in fp32 (emulated bf16 is ~60x slower on CPUs without bf16 "
                         f"instructions, and fp32 keeps CPU runs comparable); {FORCE_CPU_BF16}=1 forces bf16")
    elif values.get("bf16") and not native_bf16:
        values["bf16"], values["fp16"] = False, True
        notes.append(f"this {device_kind} device has no native bf16: training in fp16 with loss scaling "
                     "(`bash ds_run_bf16.sh --bf16 false --fp16 true` says so yourself)")
    if values.get("optim") == NPU_FUSED_ADAMW:
        raise ValueError(f"--optim {NPU_FUSED_ADAMW}: torch_npu's fused AdamW reads the gradients only on its first "
                         "step (KeyError 'step' under ZeRO, the first step's gradients again without DeepSpeed); "
                         "use adamw_torch_fused, torch's fused AdamW, which runs on the NPU too")
    if values.get("tf32") and device_kind != "cuda":
        values["tf32"] = None
        notes.append(f"--tf32 applies to NVIDIA GPUs only; ignored on {device_kind}")
    if device_kind == "cpu":
        values["use_cpu"] = True
        if values.get("deepspeed"):
            values["accelerator_config"] = use_gloo_for_deepspeed(values.get("accelerator_config"))
    return notes


def use_gloo_for_deepspeed(accelerator_config: dict | str | None) -> dict:
    """Set up accelerate's shared state as a DeepSpeed run over gloo; returns the accelerator_config adopting it."""
    for name, value in SINGLE_PROCESS_ENV.items():  # `python train.py --deepspeed ...` without a launcher
        os.environ.setdefault(name, value)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    config = accelerator_config or {}
    if isinstance(config, str) and config.lstrip().startswith("{"):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise ValueError("--accelerator_config: on the CPU with DeepSpeed pass a JSON object, not a file name")
    return {**config, "use_configured_state": True}
