"""run_test.py's work: the base and the tuned model evaluated with the tuned run's prompts, the tables, the files."""

import os
from pathlib import Path

from rich.console import Console

from tuning.eval.evaluate import EvalSettings, evaluate_model, prompt_settings
from tuning.eval.inference import inference_setup
from tuning.eval.model_card import write_model_card
from tuning.eval.report import examples_table, prompt_line, results_payload, summary_table, write_outputs
from tuning.model.baichuan import check_model_dir
from tuning.run_layout import EVAL_DIR, run_defaults, run_folder_of, tuned_model_in, use_lora_from_environment
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_jsonl


def check_output_folder(folder: Path) -> None:
    """Fail before the long evaluation, not after it, when the results could not be written there."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"--output_dir {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise DataError(f"--output_dir {folder}: {existing} is not writable")


def compare(
    *,
    base_model: Path,
    tuned_model: Path | None,
    train_output_dir: Path | None,
    eval_data: Path,
    max_samples: int | None,
    num_examples: int,
    max_new_tokens: int,
    batch_size: int,
    prompt_template: str | None,
    label_words: str | None,
    model_max_length: int | None,
    output_dir: Path | None,
    fp32: bool,
    console: Console,
) -> int:
    """run_test.py: evaluate both models, print the tables, write the result files to `output_dir` (default: eval/ in
    the tuned model's run folder). The tuned model is `tuned_model`, else the one in `train_output_dir`, else in the
    default run's folder; a prompt setting left None is the tuned run's (evaluate.prompt_settings)."""
    shown = read_jsonl(eval_data, required_keys=("review",))[:max_samples][:num_examples]
    if tuned_model is None:
        tuned_model = tuned_model_in(train_output_dir or run_defaults(lora=use_lora_from_environment()).output_dir)
    model_dirs = {"base": check_model_dir(base_model), "tuned": check_model_dir(tuned_model)}
    given = {"prompt_template": prompt_template, "label_words": label_words, "model_max_length": model_max_length}
    prompt, sources, run_config = prompt_settings(given, model_dirs["tuned"])
    output_dir = output_dir or run_folder_of(model_dirs["tuned"]) / EVAL_DIR
    check_output_folder(output_dir)
    setup = inference_setup(fp32)
    settings = EvalSettings(batch_size, max_new_tokens, max_samples, **prompt)
    console.print("prompt settings: " + prompt_line(prompt, sources, run_config), markup=False, soft_wrap=True)
    evaluations = {}
    for name, model_dir in model_dirs.items():
        console.rule(f"{name} model: {model_dir} ({setup.describe()})")
        evaluations[name] = evaluation = evaluate_model(model_dir, eval_data, setup.device, setup.dtype, settings)
        console.print(
            f"{name}: label scoring {evaluation.scoring['reviews_per_s']:.1f} reviews/s, "
            f"generation {evaluation.generation['reviews_per_s']:.1f} reviews/s"
        )
    reviews = [record["review"] for record in shown]
    payload = results_payload(
        str(eval_data), reviews, evaluations, settings, sources, run_config, setup.device.kind, setup.dtype_name
    )
    console.print(examples_table(payload))
    console.print(summary_table(payload))
    written = write_outputs(output_dir, payload) + write_model_card(run_folder_of(model_dirs["tuned"]))
    console.print("wrote " + ", ".join(str(path) for path in written), markup=False, soft_wrap=True)
    return 0
