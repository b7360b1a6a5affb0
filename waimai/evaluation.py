"""Evaluate one model on the eval reviews: label-scoring metrics, greedy answers, throughput."""

from dataclasses import dataclass
from pathlib import Path

import torch

from waimai.baichuan import (
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanTokenizer,
    attention_implementation,
    load_model,
    load_tokenizer,
)
from waimai.checkpoints import CHECKPOINT_PATTERN, latest_complete_checkpoint, missing_model_files
from waimai.devices import Device, timed
from waimai.fileio import DataError, read_json
from waimai.generation import greedy_generate, parse_answer
from waimai.metrics import OTHER, classification_metrics
from waimai.prompting import PromptFormat
from waimai.scoring import label_log_probs
from waimai.train_args import DataArguments, prompt_format_from_flags
from waimai.train_data import EncodedSplit, load_split
from waimai.training import MANIFEST_NAME

PROMPT_SETTINGS = ("prompt_template", "label_words", "model_max_length")  # train.py flags that shape the prompts
TRAIN_DEFAULTS = DataArguments()  # train.py's defaults: the settings neither a flag nor a training manifest gives
TYPE_NAMES = {str: "text", int: "a whole number"}


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int
    max_new_tokens: int
    max_samples: int | None  # evaluate only the first N records
    prompt_template: str  # as train.py's --prompt_template
    label_words: str  # as train.py's --label_words: comma-separated, positive first
    model_max_length: int  # prompt + answer tokens; longer reviews are cut as in training


@dataclass(frozen=True)
class ModelEvaluation:
    model_dir: str
    label_words: tuple[str, ...]
    gold: list[str]  # each record's answer word
    scoring: dict  # classification metrics of label scoring, plus reviews_per_s
    generation: dict  # parse_rate, metrics of the parsed answers, reviews_per_s
    answers: list[str]  # generated text, special tokens skipped
    truncated_prompts: int


def resolve_tuned_model(train_output_dir: str | Path) -> Path:
    """The final model saved in the training output folder, else its latest complete `checkpoint-N`."""
    train_output_dir = Path(train_output_dir)
    if not missing_model_files(train_output_dir):
        return train_output_dir
    checkpoint = latest_complete_checkpoint(train_output_dir)
    if checkpoint is None:
        raise DataError(
            f"{train_output_dir}: no final model and no complete checkpoint-N folder "
            "(train first with `bash ds_run_bf16.sh`, or pass --tuned_model)"
        )
    return checkpoint


def training_manifest(tuned_model: str | Path) -> Path | None:
    """The run_manifest.json train.py wrote with the tuned model: in its folder, or in the parent of a checkpoint-N."""
    tuned_model = Path(tuned_model)
    folders = [tuned_model, tuned_model.parent] if CHECKPOINT_PATTERN.match(tuned_model.name) else [tuned_model]
    return next((folder / MANIFEST_NAME for folder in folders if (folder / MANIFEST_NAME).is_file()), None)


def _recorded_settings(manifest: Path) -> dict:
    """The PROMPT_SETTINGS a training manifest holds; a malformed manifest is a DataError naming the file."""
    recorded = read_json(manifest)
    settings = {key: recorded[key] for key in PROMPT_SETTINGS if key in recorded}
    for key, value in settings.items():
        expected = type(getattr(TRAIN_DEFAULTS, key))
        if type(value) is not expected:
            raise DataError(f"{manifest}: {key} {value!r} is not {TYPE_NAMES[expected]}")
    return settings


def prompt_settings(given: dict, manifest: Path | None) -> tuple[dict, dict]:
    """Each of PROMPT_SETTINGS: the value `given` (unless None), else the training manifest's, else train.py's default.

    Returns the values and, for each, where it came from: "command line", "training run" or "default".
    """
    recorded = _recorded_settings(manifest) if manifest else {}
    values, sources = {}, {}
    for key in PROMPT_SETTINGS:
        if given.get(key) is not None:
            values[key], sources[key] = given[key], "command line"
        elif key in recorded:
            values[key], sources[key] = recorded[key], "training run"
        else:
            values[key], sources[key] = getattr(TRAIN_DEFAULTS, key), "default"
    return values, sources


def encode_eval_data(
    model_dir: str | Path, eval_data: str | Path, settings: EvalSettings
) -> tuple[BaichuanTokenizer, PromptFormat, EncodedSplit]:
    """The model's tokenizer and prompt format, and the eval records encoded with them exactly as in training."""
    tokenizer = load_tokenizer(model_dir)
    config = BaichuanConfig.from_pretrained(str(model_dir))
    prompt_format = prompt_format_from_flags(config, settings.prompt_template, settings.label_words)
    split = load_split(eval_data, tokenizer, prompt_format, settings.model_max_length, settings.max_samples)
    return tokenizer, prompt_format, split


def load_for_inference(model_dir: str | Path, device: Device, dtype: torch.dtype) -> BaichuanForCausalLM:
    """The model in `dtype` on `device`, with the fastest attention the device offers."""
    model = load_model(model_dir, dtype=dtype, attn_implementation=attention_implementation(device, dtype))
    return model.to(device.torch_device())


def evaluate_model(
    model_dir: str | Path, eval_data: str | Path, device: Device, dtype: torch.dtype, settings: EvalSettings
) -> ModelEvaluation:
    """Label scoring over the eval records (accuracy etc.), then greedy generation (answers, parse rate).

    The eval file is read and encoded before the weights are loaded, so a bad record is reported at once.
    """
    tokenizer, prompt_format, split = encode_eval_data(model_dir, eval_data, settings)
    prompts, gold, label_words = split.prompts(), split.answers, prompt_format.label_words
    model = load_for_inference(model_dir, device, dtype)
    pad_token_id = model.config.pad_token_id

    candidates = [prompt_format.label_ids(tokenizer, word) for word in label_words]
    scores, scoring_s = timed(
        device, lambda: label_log_probs(model, prompts, candidates, pad_token_id, settings.batch_size, progress=True)
    )
    predicted = [label_words[index] for index in scores.argmax(dim=-1).tolist()]
    scoring = classification_metrics(gold, predicted, label_words) | {"reviews_per_s": len(prompts) / scoring_s}

    answer_ids, generation_s = timed(
        device,
        lambda: greedy_generate(
            model, prompts, pad_token_id, prompt_format.eos_token_id, settings.max_new_tokens, settings.batch_size,
            progress=True,
        ),
    )
    answers = [tokenizer.decode(ids, skip_special_tokens=True) for ids in answer_ids]
    parsed = [parse_answer(answer, label_words) or OTHER for answer in answers]
    generation_metrics = classification_metrics(gold, parsed, label_words)
    generation = {
        "parse_rate": 1 - generation_metrics["num_other"] / len(prompts),
        "metrics": generation_metrics,
        "reviews_per_s": len(prompts) / generation_s,
    }
    return ModelEvaluation(
        model_dir=str(model_dir),
        label_words=label_words,
        gold=gold,
        scoring=scoring,
        generation=generation,
        answers=answers,
        truncated_prompts=split.truncated,
    )
