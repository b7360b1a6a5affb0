"""train.py's work: read the recipe, check the inputs, set up the device, train (resuming when possible), save."""

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.integrations import unset_hf_deepspeed_config

from transformers_modify.step_metrics import StepMetricsCallback, peak_bf16_flops, training_flops_per_token
from transformers_modify.training_args import adapt_to_device
from transformers_modify.versions import version_problems
from tuning.data.collate import EncodedDataset, PaddingCollator
from tuning.data.encode import EncodedSplit, load_split
from tuning.data.prompt import PromptFormat, prompt_format_from_flags
from tuning.eval.model_card import write_model_card
from tuning.model.baichuan import (
    BaichuanConfig,
    BaichuanTokenizer,
    attention_implementation,
    check_model_dir,
    load_model,
    load_tokenizer,
)
from tuning.run_layout import (
    CONFIG_NAME,
    CURVES_NAME,
    FINAL_STAGING,
    MANIFEST_NAME,
    SUMMARY_NAME,
    latest_recorded_checkpoint,
)
from tuning.runtime.devices import (
    Device,
    compute_dtype,
    detect_device,
    peak_memory_bytes,
    prepare_device,
    reset_peak_memory,
    synchronize,
)
from tuning.runtime.distributed import (
    decided_by_main,
    leave_process_group,
    local_rank,
    max_over_processes,
    note,
    peak_host_memory_bytes,
    world_size,
)
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import free_megabytes, is_disk_full, move_files, sha256_of, write_json
from tuning.train.curves import plot_curves
from tuning.train.flags import DataArguments, LoraArguments
from tuning.train.lora import add_lora, parameter_counts, save_adapter, save_merged_model
from tuning.train.recipe import (
    Recipe,
    build_training_arguments,
    eval_steps_for,
    global_batch,
    parse_recipe,
    training_argument_values,
)
from tuning.train.run_folder import check_shared_output_dir, output_dir_lock, plan_resume, run_shape
from tuning.train.trainer import LabelAccuracy, WaimaiTrainer

EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval_macro_f1")  # reported in train_summary.json


def run_identity(model_dir: Path, data: DataArguments, lora: LoraArguments) -> dict:
    """What makes two runs the same run: model, data, encoding and the adapter's shape (hyperparameters may change
    on resume)."""
    return {
        "model": str(model_dir.resolve()),
        "model_config_sha256": sha256_of(model_dir / "config.json"),
        "train_data_sha256": sha256_of(data.train_data),
        "eval_data_sha256": sha256_of(data.eval_data) if data.eval_data else None,
        "max_train_samples": data.max_train_samples,
        "model_max_length": data.model_max_length,
        "prompt_template": data.prompt_template,
        "label_words": data.label_words,
        "lora": lora.identity(),  # None for full fine-tuning, as in manifests written before LoRA existed
    }


def final_eval_metrics(trainer: WaimaiTrainer) -> dict:
    """The evaluation at the last step if training just made one, else a new one."""
    for entry in reversed(trainer.state.log_history):
        if "eval_accuracy" in entry:
            if entry["step"] == trainer.state.global_step:
                return {key: value for key, value in entry.items() if key.startswith("eval_")}
            break
    return trainer.evaluate()


def setup_training_arguments(recipe: Recipe, device: Device, train_samples: int) -> TrainingArguments:
    """The Trainer's arguments for this launch and device; the only place TrainingArguments is built."""
    values = training_argument_values(recipe, world_size())
    if values["tf32"] is None and device.ampere_or_newer:
        values["tf32"] = True
    elif values["tf32"] and device.kind == "cuda" and not device.ampere_or_newer:
        values["tf32"] = None
        note(f"--tf32 needs compute capability 8.0 or newer; ignored on this card ({device.capability})")
    try:
        notes = adapt_to_device(values, device.kind, device.bf16)
    except ValueError as error:
        raise DataError(str(error)) from None
    for message in notes:
        note(message)
    points = recipe.training.eval_points_per_epoch
    if points and values["eval_strategy"] != "no":
        samples_per_step = global_batch(values["per_device_train_batch_size"], values["gradient_accumulation_steps"],
                                        world_size())
        values["eval_strategy"] = "steps"
        values["eval_steps"] = eval_steps_for(points, train_samples, samples_per_step, values["num_train_epochs"])
    return build_training_arguments(values)


@dataclass
class RunInputs:
    """What training needs before the model: tokenizer, prompt format, encoded data, the Trainer's arguments."""

    tokenizer: BaichuanTokenizer
    config: BaichuanConfig
    prompt_format: PromptFormat
    train_split: EncodedSplit
    eval_split: EncodedSplit | None
    args: TrainingArguments


def prepare_inputs(recipe: Recipe, model_dir: Path, device: Device) -> RunInputs:
    """Every input checked and encoded, and the Trainer's arguments (which start the launch's process group)."""
    data = recipe.data
    tokenizer = load_tokenizer(model_dir)
    config = BaichuanConfig.from_pretrained(model_dir)
    prompt_format = prompt_format_from_flags(config, data.prompt_template, data.label_words)
    train_split = load_split(data.train_data, tokenizer, prompt_format, data.model_max_length, data.max_train_samples)
    eval_split = None
    if data.eval_data:
        eval_split = load_split(data.eval_data, tokenizer, prompt_format, data.model_max_length, data.max_eval_samples)
    for name, split in (("training", train_split), ("eval", eval_split)):
        if split and split.truncated:
            note(f"{split.truncated} of {len(split.examples)} {name} reviews are longer than "
                 f"--model_max_length {data.model_max_length} tokens: cut to fit (counted in {SUMMARY_NAME})")
    args = setup_training_arguments(recipe, device, len(train_split.examples))
    return RunInputs(tokenizer, config, prompt_format, train_split, eval_split, args)


def global_batch_of(args: TrainingArguments) -> int:
    return global_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size)


def precision_of(args: TrainingArguments) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def shape_of(args: TrainingArguments) -> dict:
    """Processes, ZeRO stage and precision of this launch (what its DeepSpeed checkpoints depend on)."""
    stage = args.hf_deepspeed_config.config.get("zero_optimization", {}).get("stage", 0) if args.deepspeed else None
    return run_shape(args.world_size, stage, precision_of(args))


def build_trainer(
    recipe: Recipe, model_dir: Path, device: Device, inputs: RunInputs | None = None
) -> tuple[WaimaiTrainer, EncodedSplit, EncodedSplit | None]:
    """Tokenizer, encoded data, arguments, model and Trainer, with every input checked first."""
    inputs = inputs or prepare_inputs(recipe, model_dir, device)
    data, args, config, prompt_format = recipe.data, inputs.args, inputs.config, inputs.prompt_format
    train_split, eval_split = inputs.train_split, inputs.eval_split

    # Under DeepSpeed the weights stay in the compute dtype (bf16/fp16: half the host memory, fp32 master copies live
    # in the optimizer); the plain Trainer keeps fp32 weights and autocasts, except LoRA's frozen base, which needs
    # no fp32 copy (its adapter is fp32).
    use_lora = recipe.lora.use_lora
    dtype = compute_dtype(device, args.bf16, args.fp16) if args.deepspeed or use_lora else torch.float32
    model = load_model(model_dir, dtype=dtype, attn_implementation=attention_implementation(device, dtype),
                       device=device)
    if use_lora:
        model = add_lora(model, recipe.lora, bool(args.activation_checkpointing))
    label_accuracy = None
    if eval_split is not None:
        label_accuracy = LabelAccuracy(
            prompts=eval_split.prompts(),
            gold=eval_split.answers,
            label_words=prompt_format.label_words,
            candidates=[prompt_format.label_ids(inputs.tokenizer, word) for word in prompt_format.label_words],
            pad_token_id=config.pad_token_id,
            batch_size=args.per_device_eval_batch_size,
        )
    step_metrics = StepMetricsCallback(
        synchronize=lambda: synchronize(device),
        flops_per_token=training_flops_per_token(model),
        sequences_per_step=global_batch_of(args),
        world_size=args.world_size,
        peak_flops=peak_bf16_flops(device.name()) if args.bf16 else None,
    )
    trainer = WaimaiTrainer(
        model=model,
        args=args,
        data_collator=PaddingCollator(config.pad_token_id, data.padding, data.model_max_length),
        train_dataset=EncodedDataset(train_split.examples),
        eval_dataset=EncodedDataset(eval_split.examples) if eval_split else None,
        processing_class=inputs.tokenizer,
        logits_at_labels_only=data.use_logits_at_labels_only(),
        label_accuracy=label_accuracy,
        step_metrics=step_metrics,
    )
    return trainer, train_split, eval_split


def save_final_model(trainer: WaimaiTrainer, output_dir: Path) -> None:
    """The final model in output_dir, complete or absent (collective: ZeRO-3 gathers it).

    The Trainer writes it to FINAL_STAGING inside output_dir; the first process then renames each file into
    output_dir, config.json last and the old one removed first, so that a folder with config.json holds one save's
    complete model (tuned_model_in takes the latest checkpoint otherwise).
    """
    staging = output_dir / FINAL_STAGING  # the same path on every process; only the first writes there
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted save
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        move_files(staging, output_dir, last="config.json")
        staging.rmdir()


def resolved_config(recipe: Recipe, args: TrainingArguments, device: Device) -> dict:
    """Every setting's final value, as the run used it (run_config.json)."""
    return {
        "recipe": str(recipe.path),
        "device": device.kind,
        "processes": args.world_size,
        "global_batch_size": global_batch_of(args),
        "model": dataclasses.asdict(recipe.model),
        "data": dataclasses.asdict(recipe.data),
        "lora": dataclasses.asdict(recipe.lora),
        "training": args.to_dict(),
    }


def run_summary(
    trainer: WaimaiTrainer,
    train_metrics: dict,
    model: str,
    device: Device,
    recipe: Recipe,
    train_split: EncodedSplit,
    eval_split: EncodedSplit | None,
    resumed_from: str | None,
) -> dict:
    """Throughput, padding and memory of this run (collective: every process must call it)."""
    args = trainer.args
    real_tokens, all_tokens = trainer.token_totals()
    peak_device = peak_memory_bytes(device)
    runtime = train_metrics["train_runtime"]
    measured = all_tokens > 0 and runtime > 0  # a launch resumed at the last step trains nothing: no speed
    trainable, total = parameter_counts(trainer.model)
    return {
        "model": model,
        "device": device.kind,
        "processes": args.world_size,
        "precision": precision_of(args),
        "use_lora": recipe.lora.use_lora,
        "trainable_parameters": trainable,  # LoRA: the adapter's; full fine-tuning: all of them
        "total_parameters": total,  # LoRA: the base model's and the adapter's
        "padding": recipe.data.padding,
        "logits_at_labels_only": trainer.logits_at_labels_only,
        "resumed_from": resumed_from,
        "train_samples": len(train_split.examples),
        "train_truncated": train_split.truncated,
        "eval_samples": len(eval_split.examples) if eval_split else 0,
        "eval_truncated": eval_split.truncated if eval_split else 0,
        "global_batch_size": global_batch_of(args),
        "optimizer_steps": trainer.state.global_step,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": runtime,  # includes the evaluations and saves made during training
        "samples_per_second": train_metrics["train_samples_per_second"] if measured else None,
        "tokens_per_second": real_tokens / runtime if measured else None,  # non-padding tokens
        "padding_share": 1 - real_tokens / all_tokens if all_tokens else None,
        "peak_device_memory_bytes": None if peak_device is None else max_over_processes(peak_device, args.device),
        "peak_host_memory_bytes": max_over_processes(peak_host_memory_bytes(), args.device),
    }


def train(recipe: Recipe, started: float) -> int:
    """Every input checked, the device set up and the data encoded, then training in the output folder, locked for
    this launch before the model loads."""
    output_dir = Path(recipe.training.output_dir)
    model_dir = check_model_dir(recipe.model.model_name_or_path)
    identity = run_identity(model_dir, recipe.data, recipe.lora)
    device = detect_device(local_rank())  # binds this rank's card before anything queries one
    prepare_device(device, local_rank())
    inputs = prepare_inputs(recipe, model_dir, device)
    check_shared_output_dir(output_dir)
    with output_dir_lock(output_dir):
        try:
            return train_in_folder(recipe, started, model_dir, identity, device, inputs)
        except Exception as error:
            if is_disk_full(error):
                raise disk_full(output_dir) from None
            raise


def disk_full(output_dir: Path) -> OSError:
    """The one-line error of a save that found the disk full: the space left and what the folder kept."""
    kept = latest_recorded_checkpoint(output_dir)
    then = (f"kept {kept} (the same command continues from there once there is space)" if kept
            else "no complete checkpoint was kept")
    return OSError(f"no space left on OUTPUT_DIR {output_dir} ({free_megabytes(output_dir)} MB free); {then}")


def train_in_folder(recipe: Recipe, started: float, model_dir: Path, identity: dict, device: Device,
                    inputs: RunInputs) -> int:
    """The resume decision, the Trainer, training, and the final model and reports in the (locked) output folder."""
    flags = recipe.training
    output_dir = Path(flags.output_dir)
    shape = shape_of(inputs.args)
    plan = decided_by_main(
        lambda: plan_resume(output_dir, identity, flags.resume_from_checkpoint, shape, flags.max_steps,
                            flags.num_train_epochs)
    )
    if plan.finished:
        note(plan.finished)
        leave_process_group()  # the resume decision was the last collective
        return 0
    resume = plan.checkpoint
    trainer, train_split, eval_split = build_trainer(recipe, model_dir, device, inputs)
    args = trainer.args
    if trainer.is_world_process_zero():
        write_json(output_dir / MANIFEST_NAME, identity | shape)
        write_json(output_dir / CONFIG_NAME, resolved_config(recipe, args, device))
    if resume:
        note(f"resuming from {resume}")

    reset_peak_memory(device)
    result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = final_eval_metrics(trainer) if eval_split else {}
    trainer.model.config.use_cache = True  # the Trainer turns the cache off for training; the saved model wants it
    if recipe.lora.use_lora:
        adapter_dir = save_adapter(trainer, output_dir)
    else:
        save_final_model(trainer, output_dir)
    trainer.save_state()

    summary = run_summary(trainer, result.metrics, identity["model"], device, recipe, train_split, eval_split, resume)
    leave_process_group()
    if trainer.is_world_process_zero():
        if recipe.lora.use_lora:  # after the last collective: the other processes need not wait for it
            unset_hf_deepspeed_config()  # else under ZeRO-3 the base would load partitioned over the processes
            save_merged_model(model_dir, adapter_dir, output_dir)
        summary |= {"wall_time_s": time.perf_counter() - started} | {key: eval_metrics.get(key) for key in EVAL_KEYS}
        write_json(output_dir / SUMMARY_NAME, summary)
        plot_curves(trainer.state.log_history, output_dir / CURVES_NAME)
        write_model_card(output_dir)
        accuracy, speed = summary["eval_accuracy"], summary["samples_per_second"]
        print(
            f"done: {summary['global_step']} steps in {summary['wall_time_s']:.0f} s, "
            + (f"{speed:.1f} samples/s" if speed is not None else "no step trained in this launch")
            + (f", eval accuracy {accuracy:.4f}" if accuracy is not None else "")
            + f"; {'merged model, adapter/' if recipe.lora.use_lora else 'model'} and {SUMMARY_NAME} in {output_dir}",
            flush=True,
        )
    return 0


def check_versions() -> None:
    """Raise DataError (one line) when the installed stack differs from requirements.txt."""
    problems = version_problems()
    if problems:
        raise DataError("; ".join(problems))


def main(argv: list[str]) -> int:
    started = time.perf_counter()

    def work() -> int:
        check_versions()
        return train(parse_recipe(argv), started)

    # Printed once per machine, also when only one machine sees the problem.
    return report_errors(work, print_here=local_rank() == 0)
