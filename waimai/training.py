"""train.py's work: check the inputs, encode the data, train (resuming when possible), save model and reports."""

import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import HfArgumentParser
from transformers.trainer_utils import IntervalStrategy

from transformers_modify.step_metrics import StepMetricsCallback, device_name, peak_bf16_flops, training_flops_per_token
from transformers_modify.training_args import note
from transformers_modify.versions import check_versions
from waimai.baichuan import BaichuanConfig, attention_implementation, check_model_dir, load_model, load_tokenizer
from waimai.checkpoints import is_complete_checkpoint, latest_complete_checkpoint
from waimai.collate import EncodedDataset, PaddingCollator
from waimai.devices import compute_dtype, peak_memory_bytes, reset_peak_memory
from waimai.fileio import DataError, read_json, sha256_of, write_json
from waimai.train_args import DataArguments, ModelArguments, WaimaiTrainingArguments
from waimai.train_data import EncodedSplit, load_split
from waimai.train_report import plot_curves
from waimai.trainer import LabelAccuracy, WaimaiTrainer

MANIFEST_NAME = "run_manifest.json"
SUMMARY_NAME = "train_summary.json"
CURVES_NAME = "training_curves.png"
EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval_macro_f1")  # reported in train_summary.json
DESCRIPTION = (
    "Full-parameter fine-tuning of a Baichuan2 model (Hugging Face Trainer; bf16 + DeepSpeed ZeRO on Ascend NPUs "
    "and NVIDIA GPUs, fp32 on a CPU) to answer 积极 or 消极 after a food-delivery review. Each example is "
    "[user] + '{review} -> ' + [assistant] + answer + [eos], with the loss on the answer only. Usually started by "
    "`bash ds_run_bf16.sh`; every TrainingArguments flag is accepted too. Re-running the same command continues "
    "from the latest complete checkpoint."
)


def parse_args(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, WaimaiTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, WaimaiTrainingArguments), description=DESCRIPTION)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # TrainingArguments' own checks of flag combinations
        raise DataError(str(error).strip().splitlines()[0]) from None


def run_identity(model_dir: Path, data: DataArguments) -> dict:
    """What makes two runs the same run: model, data and encoding (hyperparameters may change on resume)."""
    return {
        "model": str(model_dir.resolve()),
        "model_config_sha256": sha256_of(model_dir / "config.json"),
        "train_data_sha256": sha256_of(data.train_data),
        "eval_data_sha256": sha256_of(data.eval_data) if data.eval_data else None,
        "max_train_samples": data.max_train_samples,
        "model_max_length": data.model_max_length,
        "prompt_template": data.prompt_template,
        "label_words": data.label_words,
    }


def check_output_dir(output_dir: Path, identity: dict) -> None:
    """Refuse a folder that holds another run: a different manifest, or files but no manifest (logs aside)."""
    manifest = output_dir / MANIFEST_NAME
    if manifest.is_file():
        recorded = read_json(manifest)
        for key, value in identity.items():
            if recorded.get(key) != value:
                raise DataError(
                    f"{output_dir} holds another run ({key}: {recorded.get(key)!r} there, {value!r} now); "
                    "choose another --output_dir"
                )
    elif output_dir.is_dir():
        foreign = sorted(path.name for path in output_dir.iterdir() if path.suffix != ".log")
        if foreign:
            raise DataError(
                f"{output_dir} holds files but no {MANIFEST_NAME} (another run's? {', '.join(foreign[:3])}); "
                "choose another --output_dir"
            )


def resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`auto`: the latest complete checkpoint in output_dir, if any; otherwise a folder that must be complete."""
    if value in (None, "", "auto"):
        latest = latest_complete_checkpoint(output_dir)
        return str(latest) if latest else None
    if not is_complete_checkpoint(Path(value)):
        raise DataError(f"--resume_from_checkpoint {value}: not a complete checkpoint folder")
    return value


def already_trained(output_dir: Path, checkpoint: str, args: WaimaiTrainingArguments) -> bool:
    """The checkpoint reached the planned steps (or epochs) and output_dir holds the final outputs of that step.

    Resumed at its last step with --max_steps, the Trainer would train one step more.
    """
    state = read_json(Path(checkpoint) / "trainer_state.json")
    if args.max_steps > 0:
        planned_done = state["global_step"] >= args.max_steps
    else:
        planned_done = state["epoch"] >= args.num_train_epochs
    summary_path = output_dir / SUMMARY_NAME
    if not planned_done or not summary_path.is_file():
        return False
    return read_json(summary_path).get("global_step") == state["global_step"]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _max_over_processes(value: int, device: torch.device) -> int:
    tensor = torch.tensor(value, dtype=torch.long, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def final_eval_metrics(trainer: WaimaiTrainer) -> dict:
    """The evaluation at the last step if training just made one (epoch strategy), else a new one."""
    for entry in reversed(trainer.state.log_history):
        if "eval_accuracy" in entry:
            if entry["step"] == trainer.state.global_step:
                return {key: value for key, value in entry.items() if key.startswith("eval_")}
            break
    return trainer.evaluate()


def build_trainer(
    model_dir: Path, data: DataArguments, args: WaimaiTrainingArguments
) -> tuple[WaimaiTrainer, EncodedSplit, EncodedSplit | None]:
    """Tokenizer, encoded data, model and Trainer, with every input checked first."""
    device = args.hardware
    tokenizer = load_tokenizer(model_dir)
    config = BaichuanConfig.from_pretrained(model_dir)
    prompt_format = data.prompt_format(config)
    train_split = load_split(data.train_data, tokenizer, prompt_format, data.model_max_length, data.max_train_samples)
    eval_split = None
    if data.eval_data:
        eval_split = load_split(data.eval_data, tokenizer, prompt_format, data.model_max_length, data.max_eval_samples)
    else:
        args.eval_strategy, args.do_eval = IntervalStrategy.NO, False
    for name, split in (("training", train_split), ("eval", eval_split)):
        if split and split.truncated:
            note(f"{split.truncated} of {len(split.examples)} {name} reviews are longer than "
                 f"--model_max_length {data.model_max_length} tokens: cut to fit (counted in {SUMMARY_NAME})")

    # Under DeepSpeed the weights stay in the compute dtype (bf16: half the host memory, fp32 master copies live in
    # the optimizer); the plain Trainer keeps fp32 weights and autocasts.
    dtype = compute_dtype(device, args.bf16) if args.deepspeed else torch.float32
    model = load_model(model_dir, dtype=dtype, attn_implementation=attention_implementation(device, dtype))
    args.choose_sampler(data.padding)
    label_accuracy = None
    if eval_split is not None:
        label_accuracy = LabelAccuracy(
            prompts=eval_split.prompts(),
            gold=eval_split.answers,
            label_words=prompt_format.label_words,
            candidates=[prompt_format.label_ids(tokenizer, word) for word in prompt_format.label_words],
            pad_token_id=config.pad_token_id,
            batch_size=args.per_device_eval_batch_size,
        )
    step_metrics = StepMetricsCallback(
        device=device,
        flops_per_token=training_flops_per_token(model),
        sequences_per_step=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        world_size=args.world_size,
        peak_flops=peak_bf16_flops(device_name(device)) if args.bf16 else None,
    )
    logits_at_labels_only = data.logits_at_labels_only
    if logits_at_labels_only is None:
        logits_at_labels_only = data.padding == "dynamic"
    trainer = WaimaiTrainer(
        model=model,
        args=args,
        data_collator=PaddingCollator(config.pad_token_id, data.padding, data.model_max_length),
        train_dataset=EncodedDataset(train_split.examples),
        eval_dataset=EncodedDataset(eval_split.examples) if eval_split else None,
        processing_class=tokenizer,
        logits_at_labels_only=logits_at_labels_only,
        label_accuracy=label_accuracy,
        step_metrics=step_metrics,
    )
    return trainer, train_split, eval_split


def run_summary(
    trainer: WaimaiTrainer,
    train_metrics: dict,
    model: str,
    padding: str,
    train_split: EncodedSplit,
    eval_split: EncodedSplit | None,
    resumed_from: str | None,
) -> dict:
    """Throughput, padding and memory of this run (collective: every process must call it)."""
    args, device = trainer.args, trainer.args.hardware
    real_tokens, all_tokens = trainer.token_totals()
    peak_device = peak_memory_bytes(device)
    runtime = train_metrics["train_runtime"]
    return {
        "model": model,
        "device": device.kind,
        "processes": args.world_size,
        "precision": "bf16" if args.bf16 else "fp32",
        "padding": padding,
        "logits_at_labels_only": trainer.logits_at_labels_only,
        "resumed_from": resumed_from,
        "train_samples": len(train_split.examples),
        "train_truncated": train_split.truncated,
        "eval_samples": len(eval_split.examples) if eval_split else 0,
        "eval_truncated": eval_split.truncated if eval_split else 0,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": runtime,  # includes the evaluations and saves made during training
        "samples_per_second": train_metrics["train_samples_per_second"],
        "tokens_per_second": real_tokens / runtime if runtime > 0 else None,  # non-padding tokens
        "padding_share": 1 - real_tokens / all_tokens if all_tokens else None,
        "peak_device_memory_bytes": None if peak_device is None else _max_over_processes(peak_device, args.device),
        "peak_host_memory_bytes": _max_over_processes(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, args.device
        ),
    }


def train(model_args: ModelArguments, data: DataArguments, args: WaimaiTrainingArguments, started: float) -> int:
    output_dir = Path(args.output_dir)
    model_dir = check_model_dir(model_args.model_name_or_path)
    identity = run_identity(model_dir, data)
    check_output_dir(output_dir, identity)
    resume = resolve_resume(args.resume_from_checkpoint, output_dir)
    if resume and already_trained(output_dir, resume, args):
        note(f"{output_dir} already holds this run's final model ({Path(resume).name}); nothing to train")
        return 0
    if not resume and (output_dir / SUMMARY_NAME).is_file():
        note(f"{output_dir} already holds a finished run ({SUMMARY_NAME}) and no checkpoint to continue from; "
             "nothing to train (choose another --output_dir to train again)")
        return 0
    trainer, train_split, eval_split = build_trainer(model_dir, data, args)
    _barrier()  # every process has checked output_dir before the manifest appears in it
    if trainer.is_world_process_zero() and not (output_dir / MANIFEST_NAME).is_file():
        write_json(output_dir / MANIFEST_NAME, identity)
    if resume:
        note(f"resuming from {resume}")

    reset_peak_memory(args.hardware)
    result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = final_eval_metrics(trainer) if eval_split else {}
    trainer.model.config.use_cache = True  # the Trainer turns the cache off for training; the saved model wants it
    trainer.save_model(args.output_dir)
    trainer.save_state()

    summary = run_summary(trainer, result.metrics, identity["model"], data.padding, train_split, eval_split, resume)
    summary |= {"wall_time_s": time.perf_counter() - started} | {key: eval_metrics.get(key) for key in EVAL_KEYS}
    if trainer.is_world_process_zero():
        write_json(output_dir / SUMMARY_NAME, summary)
        plot_curves(trainer.state.log_history, output_dir / CURVES_NAME)
        accuracy = summary["eval_accuracy"]
        print(
            f"done: {summary['global_step']} steps in {summary['wall_time_s']:.0f} s, "
            f"{summary['samples_per_second']:.1f} samples/s"
            + (f", eval accuracy {accuracy:.4f}" if accuracy is not None else "")
            + f"; model and {SUMMARY_NAME} in {output_dir}",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        check_versions()
        model_args, data, args = parse_args(argv)
        return train(model_args, data, args, started)
    except DataError as error:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # once per machine, also when only one machine sees the problem
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
