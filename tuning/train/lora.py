"""LoRA fine-tuning with peft: the adapter around the frozen base model, and the merged model at the end of a run
(or of `python -m tuning.train.merge_lora`)."""

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from tuning.model.baichuan import BaichuanConfig, BaichuanForCausalLM, check_model_dir, load_model, load_tokenizer
from tuning.model.files import missing_adapter_files
from tuning.run_layout import ADAPTER_DIR
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import move_files, replace_folder, staging_folder
from tuning.train.flags import LoraArguments
from tuning.train.trainer import WaimaiTrainer


@contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning nobody here can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(model: PreTrainedModel, lora: LoraArguments, gradient_checkpointing: bool) -> PeftModel:
    """The model frozen, with a trainable fp32 adapter on each `--lora_target` layer (the base keeps its dtype)."""
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.lora_rank,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules(),
    )
    with _peft_quietly():
        peft_model = get_peft_model(model, config)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # in bf16 an update below 1/256 of a weight would be lost
    if gradient_checkpointing:
        # The embeddings are frozen: their output must require grad for gradients to reach checkpointed layers.
        peft_model.enable_input_require_grads()
    return peft_model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters; under ZeRO-3 a parameter's own storage is a shard and `ds_numel` its size."""
    sizes = [(getattr(parameter, "ds_numel", parameter.numel()), parameter.requires_grad)
             for parameter in model.parameters()]
    return sum(size for size, trainable in sizes if trainable), sum(size for size, _ in sizes)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path) -> BaichuanForCausalLM:
    """The base model (in the dtype it is stored in) with the adapter's update added to each adapted weight.

    peft computes each update in the adapter's fp32 and adds it to the weight in place, so a bf16 weight is rounded
    once.
    """
    missing = missing_adapter_files(adapter_dir)
    if missing:
        raise DataError(f"{adapter_dir}: not a LoRA adapter folder (no {', '.join(missing)})")
    dtype = BaichuanConfig.from_pretrained(str(check_model_dir(base_dir))).dtype or torch.float32
    base = load_model(base_dir, dtype=dtype)
    with _peft_quietly():
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_merged_model(base_dir: str | Path, adapter_dir: str | Path, output_dir: str | Path) -> None:
    """The merged model in the official layout (config.json, weights, our code, the tokenizer) in `output_dir`.

    Written to a staging folder and moved in with config.json last: `output_dir` holds a loadable model only once
    every file is in place.
    """
    merged = merge_adapter(base_dir, adapter_dir)
    with staging_folder(Path(output_dir) / "merged") as staging:
        merged.save_pretrained(staging)
        load_tokenizer(base_dir).save_pretrained(staging)
        move_files(staging, output_dir, last="config.json")


def save_adapter(trainer: WaimaiTrainer, output_dir: Path) -> Path:
    """The adapter alone in `output_dir`/adapter (collective: ZeRO-3 gathers it); returns that folder.

    The Trainer writes it to a staging folder, which replaces adapter/ once complete.
    """
    adapter_dir = output_dir / ADAPTER_DIR
    staging = output_dir / f".{ADAPTER_DIR}.saving"  # the same path on every process; only rank 0 writes there
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted save
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        replace_folder(staging, adapter_dir)
    return adapter_dir
