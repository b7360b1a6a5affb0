"""Evaluate one model on the eval reviews: label-scoring metrics, greedy answers, throughput."""

from dataclasses import dataclass
from pathlib import Path

import torch

from tuning.data.encode import EncodedSplit, load_split
from tuning.data.prompt import PromptFormat, prompt_format_from_flags
from tuning.eval.generation import greedy_generate, parse_answer
from tuning.eval.inference import load_for_inference
from tuning.eval.metrics import OTHER, classification_metrics
from tuning.eval.scoring import candidate_ids, label_log_probs
from tuning.model.baichuan import BaichuanConfig, BaichuanTokenizer, load_tokenizer
from tuning.run_layout import read_recipe_file, recipe_file, recorded_run_config
from tuning.runtime.devices import Device, timed
from tuning.runtime.errors import DataError

# The training run's settings that shape the prompts (train.py flags), and their types. A model trained elsewhere
# gets those of train.py's default recipe.
PROMPT_SETTINGS = {"prompt_template": str, "label_words": str, "model_max_length": int}
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


def _recorded_settings(path: Path, run_config: dict) -> dict:
    """The prompt settings a run_config.json holds; a malformed one is a DataError naming the file."""
    data = run_config.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{path}: no 'data' settings")
    settings = {key: data[key] for key in PROMPT_SETTINGS if key in data}
    for key, value in settings.items():
        expected = PROMPT_SETTINGS[key]
        if type(value) is not expected:
            raise DataError(f"{path}: {key} {value!r} is not {TYPE_NAMES[expected]}")
    return settings


def prompt_settings(given: dict, tuned_model: str | Path) -> tuple[dict, dict, Path | None]:
    """Each prompt setting: the value `given` (unless None), else the tuned model's training run's, else that of
    train.py's default recipe.

    Returns the values, where each came from ("command line", "training run" or "default"), and the run_config.json
    read (None when the model has none).
    """
    recorded_config = recorded_run_config(tuned_model)
    recorded = _recorded_settings(*recorded_config) if recorded_config else {}
    default = read_recipe_file(recipe_file())
    values, sources = {}, {}
    for key in PROMPT_SETTINGS:
        if given.get(key) is not None:
            values[key], sources[key] = given[key], "command line"
        elif key in recorded:
            values[key], sources[key] = recorded[key], "training run"
        else:
            values[key], sources[key] = default[key], "default"
    return values, sources, recorded_config[0] if recorded_config else None


def encode_eval_data(
    model_dir: str | Path, eval_data: str | Path, settings: EvalSettings
) -> tuple[BaichuanTokenizer, PromptFormat, EncodedSplit]:
    """The model's tokenizer and prompt format, and the eval records encoded with them exactly as in training."""
    tokenizer = load_tokenizer(model_dir)
    config = BaichuanConfig.from_pretrained(str(model_dir))
    prompt_format = prompt_format_from_flags(config, settings.prompt_template, settings.label_words)
    split = load_split(eval_data, tokenizer, prompt_format, settings.model_max_length, settings.max_samples)
    return tokenizer, prompt_format, split


def evaluate_model(
    model_dir: str | Path, eval_data: str | Path, device: Device, dtype: torch.dtype, settings: EvalSettings
) -> ModelEvaluation:
    """Label scoring over the eval records (accuracy etc.), then greedy generation (answers, parse rate).

    The eval file is read and encoded before the weights are loaded, so a bad record is reported at once. The model
    is not kept: it is freed on return (run_test.py loads the next one only then).
    """
    tokenizer, prompt_format, split = encode_eval_data(model_dir, eval_data, settings)
    prompts, gold, label_words = split.prompts(), split.answers, prompt_format.label_words
    model = load_for_inference(model_dir, device, dtype)
    pad_token_id = model.config.pad_token_id

    candidates = candidate_ids(prompt_format, tokenizer)
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
