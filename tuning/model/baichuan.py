"""Loading our Baichuan2 model and tokenizer safely, the tiny config, the attention choice, and code install.

`python -m tuning.model.baichuan install-code WEIGHTS_DIR` copies our model, config and tokenizer code into a
downloaded Baichuan2 weights folder (the originals are kept as `*.orig`), for tools that load it with
`trust_remote_code=True`. This project itself never needs remote code.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

import torch
from transformers.utils import is_flash_attn_2_available
from transformers.utils import logging as hf_logging

from tuning.model.classes import (  # noqa: F401  (re-exported: the names the other packages import from here)
    CODE_DIR,
    CODE_FILES,
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanModel,
    BaichuanTokenizer,
)
from tuning.model.files import checkpoint_shapes, missing_model_files, size_in, weight_files
from tuning.model.npu import use_npu_fused_kernels
from tuning.runtime.devices import Device, detect_device
from tuning.runtime.distributed import local_rank, note
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import read_json

ARCHITECTURE = BaichuanForCausalLM.__name__  # what config.json's "architectures" names


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


def _first(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise DataError naming what a model folder lacks, or the other architecture its config.json describes."""
    model_dir = Path(model_dir)
    missing = missing_model_files(model_dir)
    if missing:
        raise DataError(f"model folder {model_dir} is missing or incomplete: {', '.join(missing)}")
    config = read_json(model_dir / "config.json")
    model_type, architectures = config.get("model_type"), config.get("architectures") or [ARCHITECTURE]
    if model_type != BaichuanConfig.model_type or architectures != [ARCHITECTURE]:
        raise DataError(
            f"model folder {model_dir} holds another architecture (config.json: model_type {model_type!r}, "
            f"architectures {architectures}); expected Baichuan2-7B (model_type "
            f"{BaichuanConfig.model_type!r}, {ARCHITECTURE})"
        )
    if not (model_dir / "tokenizer.model").is_file():
        raise DataError(f"model folder {model_dir} has no tokenizer.model")
    return model_dir


def load_config(model_dir: str | Path) -> BaichuanConfig:
    """The checked folder's config; settings the architecture cannot have are a DataError naming config.json."""
    model_dir = check_model_dir(model_dir)
    try:
        return BaichuanConfig.from_pretrained(str(model_dir))
    except (ValueError, TypeError) as error:
        raise DataError(f"{model_dir / 'config.json'}: {str(error).splitlines()[0]}") from None


def load_tokenizer(model_dir: str | Path) -> BaichuanTokenizer:
    """The folder's tokenizer; one whose vocabulary is not the config's (another model's) is a DataError."""
    vocab_size = load_config(model_dir).vocab_size
    tokenizer_file = Path(model_dir) / "tokenizer.model"
    try:
        tokenizer = BaichuanTokenizer.from_pretrained(str(model_dir))
    except (RuntimeError, OSError) as error:  # sentencepiece's answer to a file that is not one of its models
        raise DataError(f"{tokenizer_file}: not a SentencePiece model ({str(error).splitlines()[0]})") from None
    if tokenizer.vocab_size != vocab_size:
        raise DataError(
            f"{tokenizer_file} has {tokenizer.vocab_size:,} tokens but config.json's vocab_size is {vocab_size:,}: "
            "the tokenizer belongs to another model"
        )
    return tokenizer


def check_weights_fit(model_dir: Path, config: BaichuanConfig, found: dict[str, tuple[int, ...]]) -> None:
    """The folder's tensors (`found`: names and shapes) are exactly the config's model's, in its shapes.

    Tensors the model class says to skip (`_keys_to_ignore_on_load_unexpected`, e.g. the rotary buffers of old
    checkpoints, which it derives itself) may be present.
    """
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in BaichuanForCausalLM(config).state_dict().items()}
    ignored = BaichuanForCausalLM._keys_to_ignore_on_load_unexpected or []
    missing = sorted(name for name in expected if name not in found)
    unexpected = sorted(name for name in found if name not in expected and not any(re.search(p, name) for p in ignored))
    mismatched = sorted(
        f"{name} {list(found[name])} (the model's {list(shape)})"
        for name, shape in expected.items() if name in found and found[name] != shape
    )
    problems = [
        f"{len(names)} {what} ({_first(names)})"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
        if names
    ]
    if problems:
        raise DataError(f"model folder {model_dir}: the weights do not fit config.json's model: {'; '.join(problems)}")


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: Device | None = None,
) -> BaichuanForCausalLM:
    """Load weights (safetensors, or pickles with weights_only=True) into our model class; no remote code runs.

    Every check comes first: the folder, its architecture, and its tensors against the config's model. The
    progress is one note on the main process. On an Atlas A2/A3 NPU (`device`, else the one this process
    detects) the RMSNorm layers use torch_npu's kernel.
    """
    config = load_config(model_dir)
    shapes = checkpoint_shapes(model_dir)  # from the files' headers, weights unread
    check_weights_fit(Path(model_dir), config, shapes)
    files = weight_files(model_dir)
    size = size_in(shapes, dtype)
    shown = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    files_named = f"{len(files)} weight file{'s' if len(files) > 1 else ''}"
    note(f"loading {model_dir}: {files_named}, {shown} in {str(dtype).removeprefix('torch.')}")
    progress_bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' bar per shard and per process
    try:
        model = BaichuanForCausalLM.from_pretrained(
            str(model_dir), config=config, dtype=dtype, attn_implementation=attn_implementation,
            use_safetensors=files[0].suffix == ".safetensors", weights_only=True,
        )
    finally:
        if progress_bar_was_on:
            hf_logging.enable_progress_bar()
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
