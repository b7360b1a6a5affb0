"""run_test.py's work: the base and the tuned model evaluated with the tuned run's prompts, the tables, the files."""

from pathlib import Path

from rich.console import Console

from tuning.eval.evaluate import EvalSettings, evaluate_model, prompt_settings
from tuning.eval.inference import inference_setup, release_memory
from tuning.eval.model_card import write_model_card
from tuning.eval.output_paths import check_output_folder
from tuning.eval.report import examples_table, prompt_line, results_payload, summary_table, write_outputs
from tuning.model.baichuan import check_model_dir, load_config
from tuning.run_layout import (
    EVAL_DIR,
    MANIFEST_NAME,
    run_defaults,
    run_folder_of,
    tuned_model_in,
    use_lora_from_environment,
)
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_json, read_jsonl


def recorded_base_model(model_dir: Path) -> tuple[Path, Path] | None:
    """The run_manifest.json of the tuned model's run folder and the base model it records (train.py writes its
    resolved path); None when the folder has no manifest (a model trained elsewhere)."""
    manifest = run_folder_of(model_dir) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    base = read_json(manifest).get("model")
    if not isinstance(base, str) or not base:
        raise DataError(f"{manifest}: no 'model' naming the base model")
    return manifest, Path(base)


def check_base_model(base_model: Path, tuned_model: Path, other_base: bool) -> None:
    """The base is the one the tuned model was trained from, unless `other_base` (--other_base) says otherwise."""
    recorded = recorded_base_model(tuned_model)
    if other_base or recorded is None:
        return
    manifest, base = recorded
    if base_model.resolve() != base.resolve():
        raise DataError(
            f"--base_model {base_model}: the tuned model {tuned_model} was trained from {base} ({manifest}); "
            "compare with that one, or pass --other_base to compare with another base (the same model at another "
            "path, too)"
        )


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
    dtype: str,
    other_base: bool,
    console: Console,
) -> int:
    """run_test.py: evaluate both models, print the tables, write the result files to `output_dir` (default: eval/ in
    the tuned model's run folder). The tuned model is `tuned_model`, else the one in `train_output_dir`, else in the
    default run's folder; a prompt setting left None is the tuned run's (evaluate.prompt_settings). The base must be
    the one the tuned run recorded, unless `other_base`.

    Everything is checked before the first weight is read, and the models are loaded one at a time: the first is
    freed before the second loads, so the peak is one model's weights and its activations."""
    records = read_jsonl(eval_data, required_keys=("review",))[:max_samples]
    if tuned_model is None:
        tuned_model = tuned_model_in(train_output_dir or run_defaults(lora=use_lora_from_environment()).output_dir)
    model_dirs = {"base": check_model_dir(base_model), "tuned": check_model_dir(tuned_model)}
    check_base_model(model_dirs["base"], model_dirs["tuned"], other_base)
    given = {"prompt_template": prompt_template, "label_words": label_words, "model_max_length": model_max_length}
    prompt, sources, run_config = prompt_settings(given, model_dirs["tuned"])
    output_dir = output_dir or run_folder_of(model_dirs["tuned"]) / EVAL_DIR
    check_output_folder(output_dir, "--output_dir")
    setup = inference_setup(dtype, list(model_dirs.values()))
    longest = prompt["model_max_length"] + max_new_tokens
    batch_size = setup.batch_size(batch_size, len(records), load_config(model_dirs["tuned"]), longest)
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
        release_memory(setup.device)  # the model evaluate_model loaded is gone before the next one loads
    reviews = [record["review"] for record in records[:num_examples]]
    payload = results_payload(
        str(eval_data), reviews, evaluations, settings, sources, run_config, setup.device.kind, setup.dtype_name
    )
    console.print(examples_table(payload))
    console.print(summary_table(payload))
    written = write_outputs(output_dir, payload) + write_model_card(run_folder_of(model_dirs["tuned"]))
    console.print("wrote " + ", ".join(str(path) for path in written), markup=False, soft_wrap=True)
    return 0
