"""A training run's folder: where the recipes put it, what train.py writes in it, and which model it holds.

train.py writes the folder and run_test.py, predict.py and the benchmarks read it; all of them take its layout from
here, so that evaluation never imports the training code (tests/test_layout.py).

The recipes' `output_dir` values name the folders (configs/*.yaml): the 7B run and the CPU demo, each with a LoRA
recipe of its own (USE_LORA=true) whose folder differs, so that a LoRA run never continues or overwrites a full one.
Files train.py writes there:
- run_manifest.json: what makes two runs the same run (model, data, encoding) and the run's shape (processes,
  ZeRO stage, precision);
- run_config.json: every setting's final value (`{"recipe", "model", "data", "lora", "training"}`); run_test.py and
  predict.py read the prompt settings from it;
- train_summary.json, training_curves.png, checkpoint-N/ folders and the final model. A LoRA run's checkpoints hold
  the adapter (adapter_config.json, adapter_model.safetensors); its final model is the merged one, with the adapter
  alone in adapter/.
run_test.py writes its results to eval/ in the folder.

`python -m tuning.run_layout [--demo]` prints what the launchers use by default, `RECIPE BASE_MODEL OUTPUT_DIR`
(paths relative to the repository): the 7B run's, or with --demo the CPU demo's; with USE_LORA=true the LoRA
recipe's.
"""

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuning.model.files import WEIGHT_FILES, missing_adapter_files, missing_model_files
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import files_under, read_json, sha256_of_files, write_json
from tuning.runtime.paths import REPO_ROOT

RECIPES_DIR = REPO_ROOT / "configs"
MANIFEST_NAME = "run_manifest.json"
CONFIG_NAME = "run_config.json"
SUMMARY_NAME = "train_summary.json"
CURVES_NAME = "training_curves.png"
EVAL_DIR = "eval"  # run_test.py's results
ADAPTER_DIR = "adapter"  # a LoRA run's adapter alone, beside the merged model
CHECKSUMS_NAME = "checkpoint_sha256.json"  # in each checkpoint-N: the SHA-256 of its files, written after the save
FINAL_STAGING = ".final-staging"  # the final model is written here, then moved into the run folder
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# USE_LORA's values, as train.py's --use_lora reads them
TRUE_WORDS, FALSE_WORDS = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0", "")


def recipe_file(demo: bool = False, lora: bool = False) -> Path:
    """The recipe the launchers run: the 7B's or the CPU demo's, for full or LoRA fine-tuning."""
    return RECIPES_DIR / f"{'tiny_demo' if demo else 'baichuan2_7b'}{'_lora' if lora else ''}.yaml"


def read_recipe_file(path: Path) -> dict:
    """The recipe's `flag: value` mapping; a missing, unreadable or malformed file is a DataError naming it."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read the recipe ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: a recipe is a mapping of flag: value lines")
    return values


@dataclass(frozen=True)
class RunDefaults:
    """A launcher's run when no folder is given: its recipe, and the recipe's base model and output folder."""

    recipe: Path
    base_model: Path
    output_dir: Path


def run_defaults(demo: bool = False, lora: bool = False) -> RunDefaults:
    """The run of `recipe_file(demo, lora)`, its paths inside the repository (as the launchers run from there)."""
    recipe = recipe_file(demo, lora)
    values = read_recipe_file(recipe)
    return RunDefaults(recipe, REPO_ROOT / values["model_name_or_path"], REPO_ROOT / values["output_dir"])


def default_run_dirs(lora: bool) -> list[Path]:
    """Where ds_run_bf16.sh trains when no folder is given: the 7B run's folder, then the CPU demo's."""
    return [run_defaults(demo, lora).output_dir for demo in (False, True)]


def use_lora_from_environment() -> bool:
    """USE_LORA as the launchers read it: true/yes/1 or false/no/0 (any case); unset or empty is false."""
    value = os.environ.get("USE_LORA", "")
    if value.lower() not in TRUE_WORDS + FALSE_WORDS:
        raise DataError(f"USE_LORA={value}: expected true or false")
    return value.lower() in TRUE_WORDS


def missing_deepspeed_files(folder: str | Path) -> list[str]:
    """What a DeepSpeed checkpoint lacks: DeepSpeed writes `latest` (naming the global_step folder) after the states.

    A folder with neither `latest` nor a global_step folder is no DeepSpeed checkpoint and lacks nothing.
    """
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        return ["latest"] if any(folder.glob("global_step*")) else []
    tag = latest.read_text(encoding="utf-8").strip()
    if not tag or not (folder / tag).is_dir():
        return [f"{tag or 'the folder'} named by latest"]
    patterns = ("*model_states.pt", "*optim_states.pt")
    return [f"{tag}/{pattern}" for pattern in patterns if not any((folder / tag).glob(pattern))]


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint; None when it is.

    The Trainer writes trainer_state.json last, so a readable one marks a finished save (and DeepSpeed's states). The
    weights are a model's, or a LoRA run's adapter.
    """
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (an interrupted save)"
    try:
        read_json(state)
    except DataError:
        return "trainer_state.json is damaged (not a JSON object)"
    if missing_model_files(folder) and missing_adapter_files(folder):
        return f"no weights ({', '.join(missing_model_files(folder))})"
    missing = missing_deepspeed_files(folder)
    return f"DeepSpeed's states are incomplete (no {', '.join(missing)})" if missing else None


def is_complete_checkpoint(folder: Path) -> bool:
    return checkpoint_problem(folder) is None


def numbered_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders in output_dir, the highest N first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    numbered = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))
    ]
    return [path for _, path in sorted(numbered, reverse=True)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The `checkpoint-N` folder with the highest N that finished saving; interrupted or damaged ones are skipped."""
    return next((path for path in numbered_checkpoints(output_dir) if is_complete_checkpoint(path)), None)


def latest_recorded_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete `checkpoint-N` whose SHA-256 record was written (the save finished on every process);
    whether its files still match the record is checksum_problem's question."""
    return next((path for path in numbered_checkpoints(output_dir)
                 if is_complete_checkpoint(path) and (path / CHECKSUMS_NAME).is_file()), None)


def write_checksums(checkpoint: str | Path) -> None:
    """Record the SHA-256 of every file in a saved checkpoint (CHECKSUMS_NAME, written atomically)."""
    checkpoint = Path(checkpoint)
    write_json(checkpoint / CHECKSUMS_NAME, {"files": sha256_of_files(checkpoint, exclude=CHECKSUMS_NAME)})


def checksum_problem(checkpoint: Path) -> str | None:
    """Why the files of `checkpoint` are not those recorded when it was saved; None when they are.

    A file added, missing or changed since the save counts; nothing in the folder is opened but to hash it.
    """
    record = checkpoint / CHECKSUMS_NAME
    if not record.is_file():
        return f"no {CHECKSUMS_NAME} (saved by an older version, or interrupted before the record)"
    try:
        recorded = read_json(record).get("files")
    except DataError:
        recorded = None
    if not isinstance(recorded, dict):
        return f"{CHECKSUMS_NAME} is damaged"
    present = set(files_under(checkpoint, exclude=CHECKSUMS_NAME))
    added, missing = sorted(present - recorded.keys()), sorted(recorded.keys() - present)
    if added:
        return f"{added[0]} was not written by the save"
    if missing:
        return f"{missing[0]} is missing"
    actual = sha256_of_files(checkpoint, exclude=CHECKSUMS_NAME)
    changed = sorted(name for name, digest in recorded.items() if actual[name] != digest)
    return f"{changed[0]} differs from the SHA-256 recorded at the save" if changed else None


def run_folder_of(model_dir: str | Path) -> Path:
    """The training run folder of a saved model: the folder itself, or the parent of a checkpoint-N."""
    model_dir = Path(model_dir)
    return model_dir.parent if CHECKPOINT_PATTERN.match(model_dir.name) else model_dir


def missing_final_model_files(run_dir: Path) -> list[str]:
    """What the final model in a run folder lacks: a model's files and the tokenizer (train.py writes them all)."""
    missing = missing_model_files(run_dir)
    return missing if (run_dir / TOKENIZER_FILE).is_file() else [*missing, TOKENIZER_FILE]


def tuned_model_in(run_dir: str | Path) -> Path:
    """The final model saved in a training run folder (a LoRA run's merged model), else its latest complete
    `checkpoint-N` that holds a model (with a note when a final model was left incomplete: an interrupted save)."""
    run_dir = Path(run_dir)
    missing = missing_final_model_files(run_dir)
    if not missing:
        return run_dir
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None:
        if not missing_model_files(run_dir):
            return run_dir  # a model folder without its tokenizer: loading it names what it lacks
        raise DataError(
            f"{run_dir}: no final model and no complete checkpoint-N folder "
            "(train one first with `bash ds_run_bf16.sh`)"
        )
    if missing_model_files(checkpoint):
        raise DataError(
            f"{run_dir}: no merged model yet, and {checkpoint.name} holds only a LoRA adapter: run the same training "
            f"command again to finish, or merge it with `python -m tuning.train.merge_lora --base_model BASE --adapter "
            f"{checkpoint} --output_dir DIR`"
        )
    if any((run_dir / name).is_file() for name in ("config.json", TOKENIZER_FILE, *WEIGHT_FILES)):
        print(f"note: {run_dir}: the final model is incomplete (no {', '.join(missing)}: an interrupted save?); "
              f"using {checkpoint.name}", file=sys.stderr, flush=True)
    return checkpoint


def recorded_run_config(model_dir: str | Path) -> tuple[Path, dict] | None:
    """(path, contents) of the run_config.json written with a tuned model; None for a model trained elsewhere."""
    path = run_folder_of(model_dir) / CONFIG_NAME
    return (path, read_json(path)) if path.is_file() else None


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.run_layout",
        description="Print the launchers' default run as RECIPE BASE_MODEL OUTPUT_DIR (paths relative to the "
        "repository): the 7B run's, or the CPU demo's; the LoRA recipe's with USE_LORA=true.",
    )
    parser.add_argument("--demo", action="store_true", help="the CPU demo's run instead of the 7B's")
    args = parser.parse_args(argv)

    def show() -> int:
        run = run_defaults(args.demo, use_lora_from_environment())
        print(_shown(run.recipe), _shown(run.base_model), _shown(run.output_dir))
        return 0

    return report_errors(show)


if __name__ == "__main__":
    sys.exit(main())
