"""Precision and device checks per device kind, applied to TrainingArguments before transformers validates them.

The original recipe patched transformers' training_args.py so that its bf16/fp16 checks accepted the NPU.
transformers 5.24 detects NPU bf16 itself; what is still needed here:
- bf16 on a device without native bf16: an error on an accelerator; on the CPU training falls back to fp32 with a
  printed note (emulated bf16 is ~60x slower there); `WAIMAI_CPU_BF16=1` keeps bf16 on the CPU anyway;
- `--tf32` exists on NVIDIA GPUs only: elsewhere it is dropped with a note instead of stopping the run;
- the CPU: `use_cpu` (transformers then accepts bf16 there) and, for DeepSpeed, a gloo process group, which
  accelerate 1.15 does not set up on a machine without accelerators (each rank would run as a world of one).
"""

import json
import os
import sys

from accelerate import PartialState
from transformers import TrainingArguments

from waimai.devices import Device, prepare_device
from waimai.fileio import DataError

FORCE_CPU_BF16 = "WAIMAI_CPU_BF16"
SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "29500"}


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def note(message: str) -> None:
    """A one-line note on stderr, printed by the first process only."""
    if is_main_process():
        print(f"note: {message}", file=sys.stderr, flush=True)


def adapt_training_args(args: TrainingArguments, device: Device) -> None:
    """Fix up `args` for `device`; call before `TrainingArguments.__post_init__`."""
    if args.fp16 and args.bf16:
        raise DataError("--fp16 and --bf16 exclude each other")
    if args.bf16 and not device.bf16:
        if device.kind != "cpu":
            raise DataError(f"--bf16: this {device.kind} device has no native bf16; train in fp32 with "
                            "--bf16 false (BF16=false bash ds_run_bf16.sh)")
        if os.environ.get(FORCE_CPU_BF16) == "1":
            note(f"{FORCE_CPU_BF16}=1: bf16 on a CPU without native bf16 is emulated and very slow")
        else:
            args.bf16 = False
            note(f"this CPU has no native bf16 (emulated bf16 is ~60x slower): training in fp32; "
                 f"{FORCE_CPU_BF16}=1 forces bf16")
    if args.tf32 and device.kind != "cuda":
        args.tf32 = None
        note(f"--tf32 applies to NVIDIA GPUs only; ignored on {device.kind}")
    prepare_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.kind == "cpu":
        args.use_cpu = True
        if args.deepspeed:
            _use_gloo_for_deepspeed(args)


def _use_gloo_for_deepspeed(args: TrainingArguments) -> None:
    """Set up accelerate's shared state as a DeepSpeed run over gloo; TrainingArguments then adopts it."""
    for name, value in SINGLE_PROCESS_ENV.items():  # `python train.py --deepspeed ...` without a launcher
        os.environ.setdefault(name, value)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    config = args.accelerator_config or {}
    if isinstance(config, str) and config.lstrip().startswith("{"):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise DataError("--accelerator_config: on the CPU with DeepSpeed pass a JSON object, not a file name")
    args.accelerator_config = {**config, "use_configured_state": True}
