"""Loading our Baichuan2 model and tokenizer safely, the tiny config, the attention choice, and code install.

`python -m tuning.model.baichuan install-code WEIGHTS_DIR` copies our model, config and tokenizer code into a
downloaded Baichuan2 weights folder (the originals are kept as `*.orig`), for tools that load it with
`trust_remote_code=True`. This project itself never needs remote code.
"""

import argparse
import pickle
import shutil
import sys
from pathlib import Path

import torch
from transformers.utils import is_flash_attn_2_available

from tuning.model.classes import (  # noqa: F401  (re-exported: the names the other packages import from here)
    CODE_DIR,
    CODE_FILES,
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanModel,
    BaichuanTokenizer,
)
from tuning.model.files import missing_model_files
from tuning.model.npu import use_npu_fused_kernels
from tuning.runtime.devices import Device, detect_device
from tuning.runtime.distributed import local_rank
from tuning.runtime.errors import DataError, report_errors


def tiny_config(vocab_size: int, user_token_id: int, assistant_token_id: int, **overrides) -> BaichuanConfig:
    """A small Baichuan2-architecture config (about 1.4M parameters with a 4k vocabulary) for tests and the CPU demo."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        model_max_length=512,
        user_token_id=user_token_id,
        assistant_token_id=assistant_token_id,
    )
    settings.update(overrides)
    return BaichuanConfig(**settings)


def attention_implementation(device: Device, dtype: torch.dtype) -> str:
    """Fused attention where it exists for the device and dtype, SDPA otherwise.

    On Ascend NPUs transformers routes "flash_attention_2" to `torch_npu.npu_fusion_attention`;
    on CUDA it needs the flash-attn package and compute capability 8 or more (not V100, T4); both need bf16/fp16.
    """
    half_precision = dtype in (torch.bfloat16, torch.float16)
    flash_on_cuda = device.kind == "cuda" and device.ampere_or_newer and is_flash_attn_2_available()
    if half_precision and (device.kind == "npu" or flash_on_cuda):
        return "flash_attention_2"
    return "sdpa"


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise DataError naming what a model folder lacks."""
    model_dir = Path(model_dir)
    missing = missing_model_files(model_dir)
    if missing:
        raise DataError(f"model folder {model_dir} is missing or incomplete: {', '.join(missing)}")
    if not (model_dir / "tokenizer.model").is_file():
        raise DataError(f"model folder {model_dir} has no tokenizer.model")
    return model_dir


def load_tokenizer(model_dir: str | Path) -> BaichuanTokenizer:
    return BaichuanTokenizer.from_pretrained(str(check_model_dir(model_dir)))


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: Device | None = None,
) -> BaichuanForCausalLM:
    """Load weights (safetensors, or pickles with weights_only=True) into our model class; no remote code runs.

    On an Atlas A2/A3 NPU (`device`, else the one this process detects) the RMSNorm layers use torch_npu's kernel.
    """
    try:
        model = BaichuanForCausalLM.from_pretrained(
            str(check_model_dir(model_dir)), dtype=dtype, attn_implementation=attn_implementation, weights_only=True
        )
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[-1] if str(error) else type(error).__name__
        raise DataError(f"{model_dir}: refused to unpickle weights that hold more than tensors ({reason})") from None
    use_npu_fused_kernels(model, device or detect_device(local_rank()))
    return model


def install_code(weights_dir: str | Path) -> list[Path]:
    """Copy our code files into a weights folder; an existing different file is renamed to `*.orig` first."""
    weights_dir = Path(weights_dir)
    if not (weights_dir / "config.json").is_file():
        raise DataError(f"{weights_dir} is not a model folder (no config.json)")
    installed = []
    for name in CODE_FILES:
        source, target = CODE_DIR / name, weights_dir / name
        if target.is_file() and target.read_bytes() != source.read_bytes():
            backup = target.with_name(name + ".orig")
            if not backup.exists():
                target.rename(backup)
        shutil.copyfile(source, target)
        installed.append(target)
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.model.baichuan",
        description="Tools for our Baichuan2 code (Baichuan2-7B/).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser(
        "install-code",
        help="copy our configuration/modeling/tokenization files into a downloaded Baichuan2 weights folder",
        description="Copy our configuration_baichuan.py, modeling_baichuan.py and tokenization_baichuan.py into "
        "WEIGHTS_DIR, so that other tools loading it with trust_remote_code=True run our code. "
        "Each original file that differs is kept as NAME.orig.",
    )
    install.add_argument("weights_dir", help="folder holding config.json and the Baichuan2 weights")
    args = parser.parse_args(argv)

    def install() -> int:
        for path in install_code(args.weights_dir):
            print(f"installed {path}")
        return 0

    return report_errors(install)


if __name__ == "__main__":
    sys.exit(main())
