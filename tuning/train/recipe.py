"""A training run's settings: a recipe file (configs/*.yaml) plus `--flag value` overrides, parsed without side effects.

Parsing builds only the dataclasses of tuning/train/flags.py and TrainingFlags; nothing touches a device, a process
group or `os.environ`. The TrainingArguments that the Trainer needs (whose own `__post_init__` initialises the
device) are built from them by `run.setup_training_arguments()` when training starts, for the device found then.

`python -m tuning.train.recipe` writes tuning/train/training_arguments.json, what HfArgumentParser makes of
TrainingArguments, from which train.py answers --help before transformers loads (tuning/train/flags.py).
"""

import dataclasses
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from tuning.runtime.errors import DataError
from tuning.runtime.fileio import write_json
from tuning.train.flags import (
    ARGUMENT_TYPES,
    DEFAULT_LORA_RECIPE,
    DEFAULT_RECIPE,
    DESCRIPTION,
    TRAINING_ARGUMENTS_FILE,
    DataArguments,
    LoraArguments,
    ModelArguments,
    RunFlags,
    apply_recipe,
    split_recipe_argument,
)


@dataclass(kw_only=True)
class TrainingFlags(RunFlags, TrainingArguments):
    """Every TrainingArguments flag plus ours (RunFlags), held as parsed: `__post_init__` only validates.

    `run.setup_training_arguments()` turns them into the TrainingArguments that the Trainer uses.
    """


RECIPE_ARGUMENTS = (ModelArguments, DataArguments, LoraArguments, TrainingFlags)


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: ModelArguments
    data: DataArguments
    lora: LoraArguments
    training: TrainingFlags


def recipe_parser(recipe_path: Path | None = None) -> HfArgumentParser:
    """train.py's parser; the recipe file's values are its defaults (so `--help` shows them)."""
    parser = HfArgumentParser(RECIPE_ARGUMENTS, description=DESCRIPTION)
    if recipe_path is not None:
        apply_recipe(parser, recipe_path)
    return parser


def _parse_with(path: Path, flags: list[str]) -> Recipe:
    parser = recipe_parser(path)
    try:
        model, data, lora, training = parser.parse_args_into_dataclasses(args=flags, look_for_args_file=False)
    except ValueError as error:
        raise DataError(str(error).strip().splitlines()[0]) from None
    return Recipe(path, model, data, lora, training)


def parse_recipe(argv: list[str]) -> Recipe:
    """`[RECIPE.yaml] [--flag value ...]`: the recipe's values, overridden by the flags (pure: no device touched).

    Without a recipe file: DEFAULT_RECIPE, or DEFAULT_LORA_RECIPE when the flags turn LoRA on (its own learning rate).
    """
    path, flags = split_recipe_argument(argv)
    recipe = _parse_with(path or DEFAULT_RECIPE, flags)
    if path is None and recipe.lora.use_lora:
        recipe = _parse_with(DEFAULT_LORA_RECIPE, flags)
    return recipe


def global_batch(device_batch: int, accumulation: int, processes: int) -> int:
    """Reviews per optimizer step over all processes."""
    return device_batch * accumulation * processes


def batch_layout(global_batch_size: int, processes: int, largest_device_batch: int) -> tuple[int, int]:
    """(batch per device, gradient accumulation) whose global_batch() on `processes` devices is `global_batch_size`.

    The largest per-device batch that divides the per-process share and fits `largest_device_batch`, so that
    accumulation is 1 wherever memory allows.
    """
    if global_batch_size % processes:
        raise DataError(f"--global_batch_size {global_batch_size} cannot be split evenly over {processes} processes")
    per_process = global_batch_size // processes
    device_batch = max(size for size in range(1, min(per_process, largest_device_batch) + 1) if per_process % size == 0)
    return device_batch, per_process // device_batch


def training_argument_values(recipe: Recipe, processes: int) -> dict:
    """TrainingArguments keyword values of the recipe for a launch of `processes` processes (device-independent)."""
    flags = recipe.training
    values = {item.name: getattr(flags, item.name) for item in dataclasses.fields(TrainingArguments) if item.init}
    if flags.global_batch_size:
        values["per_device_train_batch_size"], values["gradient_accumulation_steps"] = batch_layout(
            flags.global_batch_size, processes, flags.per_device_train_batch_size
        )
    # The recipe's --gradient_checkpointing is transformers 5's --activation_checkpointing.
    if values["gradient_checkpointing"] is not None and values["activation_checkpointing"] is None:
        values["activation_checkpointing"], values["gradient_checkpointing"] = values["gradient_checkpointing"], None
    if flags.warmup_ratio is not None:
        values["warmup_steps"] = flags.warmup_ratio
    if values["train_sampling_strategy"] is None:
        values["train_sampling_strategy"] = "group_by_length" if recipe.data.padding == "dynamic" else "random"
    if values["label_names"] is None:  # the Trainer would also count `logits_at_labels_only` as a label
        values["label_names"] = ["labels"]
    # Accuracy comes from label scoring (WaimaiTrainer); gathering every eval logit (vocabulary-wide, per token
    # with --padding max_length) would only fill device memory.
    values["prediction_loss_only"] = True
    if not recipe.data.eval_data:
        values["eval_strategy"], values["do_eval"] = "no", False
    return values


def eval_steps_for(points_per_epoch: int, train_samples: int, samples_per_step: int, epochs: float) -> int:
    """Optimizer steps between evaluations so that an epoch holds about `points_per_epoch` of them."""
    steps_per_epoch = max(1, -(-train_samples // samples_per_step))
    return max(1, round(steps_per_epoch / points_per_epoch)) if epochs else steps_per_epoch


def build_training_arguments(values: dict) -> TrainingArguments:
    """The Trainer's arguments; transformers' own checks of flag combinations become one-line DataErrors."""
    try:
        return TrainingArguments(**values)
    except ValueError as error:
        raise DataError(str(error).strip().splitlines()[0]) from None


def training_arguments_actions() -> list[dict]:
    """What HfArgumentParser makes of TrainingArguments: each action's add_argument values, as flags.fast_parser
    rebuilds them (the default as text where JSON has no such value; types other than int, float and str left to
    the full parser)."""
    actions = []
    for action in HfArgumentParser(TrainingArguments)._actions:
        if action.dest == "help":
            continue
        default = action.default
        if not isinstance(default, (type(None), bool, int, float, str, list)):
            default = str(default)
        kind = next((name for name, kind in ARGUMENT_TYPES.items() if action.type is kind), None)
        values = {"option_strings": action.option_strings, "dest": action.dest, "default": default,
                  "help": action.help, "type": kind, "nargs": action.nargs, "const": action.const,
                  "choices": None if action.choices is None else [str(choice) for choice in action.choices],
                  "required": action.required or None, "metavar": action.metavar,
                  "action": "store_false" if action.const is False and action.nargs == 0 else None}
        if values["action"]:
            del values["nargs"], values["const"], values["type"]
        actions.append({key: value for key, value in values.items() if value is not None or key == "default"})
    return actions


if __name__ == "__main__":
    write_json(TRAINING_ARGUMENTS_FILE, {"transformers": importlib.metadata.version("transformers"),
                                         "actions": training_arguments_actions()})
