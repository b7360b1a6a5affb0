"""train.py's flags without transformers: our settings, the recipe file as the parser's defaults, and `--help` and
flag errors answered before torch, transformers and DeepSpeed load.

The settings every recipe sets have no default here: the recipe file is their one home. A LoRA setting that a recipe
leaves out comes from the 7B LoRA recipe, and --lora_alpha from --lora_rank.

The fast parser is transformers' own HfArgumentParser, loaded from its file without the transformers package (it
needs only the standard library and yaml), over our dataclasses; TrainingArguments' flags come from
training_arguments.json, what HfArgumentParser makes of TrainingArguments in the pinned transformers
(`python -m tuning.train.recipe` writes it). tests/train/test_flags.py checks the file against the installed
transformers and the fast parser's help against the full parser's.
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import sys
from argparse import ArgumentParser, Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from tuning.data.prompt import PADDING_MODES
from tuning.run_layout import read_recipe_file, recipe_file
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.paths import REPO_ROOT

DEFAULT_RECIPE, DEFAULT_LORA_RECIPE = recipe_file(), recipe_file(lora=True)
RECIPE_SUFFIXES = (".yaml", ".yml")
TRAINING_ARGUMENTS_FILE = Path(__file__).with_name("training_arguments.json")
ARGUMENT_TYPES = {"int": int, "float": float, "str": str}  # the types the fast parser checks itself
DESCRIPTION = (
    "Full-parameter fine-tuning of a Baichuan2 model, or LoRA fine-tuning with --use_lora true (Hugging Face "
    "Trainer; bf16 + DeepSpeed ZeRO on Ascend NPUs and NVIDIA GPUs, fp32 on a CPU) to answer 积极 or 消极 after a "
    "food-delivery review. Each example is [user] + '{review} -> ' + [assistant] + answer + [eos], with the loss on "
    "the answer only. Usage: python train.py [RECIPE.yaml] [--flag value ...]: the recipe file (default "
    f"{DEFAULT_RECIPE.relative_to(REPO_ROOT)}, or {DEFAULT_LORA_RECIPE.relative_to(REPO_ROOT)} with --use_lora "
    "true) sets the run, flags override it; the defaults shown below are the recipe's. Usually started by `bash "
    "ds_run_bf16.sh`; every TrainingArguments flag is accepted too. Re-running the same command continues from the "
    "latest complete checkpoint."
)


@dataclass(kw_only=True)
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Baichuan2 model folder to fine-tune (config.json, weights, "
                                                      "tokenizer.model)."})


@dataclass(kw_only=True)
class DataArguments:
    train_data: str = field(metadata={"help": 'Training reviews, JSONL: one {"review": ..., "label": "积极"|"消极"} '
                                              "per line (make_data.py writes it)."})
    eval_data: str = field(metadata={"help": "Eval reviews, same format, for eval loss and label-scoring accuracy; "
                                             "an empty string turns evaluation off."})
    model_max_length: int = field(metadata={"aliases": ["--max_seq_length"],
                                            "help": "Longest example in tokens (prompt + answer + eos); a longer "
                                                    "review is cut in its prompt, never dropped."})
    padding: str = field(metadata={"choices": PADDING_MODES,
                                   "help": "dynamic: pad each batch to its longest example; max_length: pad every "
                                           "batch to --model_max_length."})
    logits_at_labels_only: bool | None = field(metadata={"help": "Compute the vocabulary logits only at the answer "
                                                                 "tokens; unset: as --padding is dynamic."})
    prompt_template: str = field(metadata={"help": "Prompt text around the review; must contain {review} once."})
    label_words: str = field(metadata={"help": "Answer words, positive first, comma-separated; make_data.py's "
                                               "积极/消极 map to them in order."})
    max_train_samples: int | None = field(default=None,
                                          metadata={"help": "Use only the first N training reviews (quick runs)."})
    max_eval_samples: int | None = field(default=None,
                                         metadata={"help": "Evaluate on the first N eval reviews only."})

    def __post_init__(self):
        limits = {"--max_train_samples": self.max_train_samples, "--max_eval_samples": self.max_eval_samples}
        for flag, value in limits.items():
            if value is not None and value < 1:
                raise DataError(f"{flag} {value}: must be at least 1")

    def use_logits_at_labels_only(self) -> bool:
        return self.padding == "dynamic" if self.logits_at_labels_only is None else self.logits_at_labels_only


# Baichuan2's linear layers, each in every decoder layer (lm_head is a NormHead: its rows are normalised, so an
# adapter there could not be merged into it).
LORA_LAYERS = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class LoraArguments:
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) on the frozen base model "
                                                            "instead of every weight (docs/lora.md)."})
    lora_rank: int = field(metadata={"help": "Rank r of each adapter."})
    lora_alpha: int | None = field(default=None, metadata={"help": "The adapter's output is scaled by lora_alpha / "
                                                                   "lora_rank; unset: 2 x --lora_rank."})
    lora_dropout: float = field(metadata={"help": "Dropout on the adapter's input while training, in [0, 1)."})
    lora_target: str = field(default=",".join(LORA_LAYERS),
                             metadata={"help": "Comma-separated linear layers that get an adapter."})

    def __post_init__(self):
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise DataError("--lora_rank must be 1 or more and --lora_alpha more than 0")
        if not 0 <= self.lora_dropout < 1:
            raise DataError(f"--lora_dropout {self.lora_dropout}: give a fraction in [0, 1)")
        names = self.target_modules()
        unknown = [name for name in names if name not in LORA_LAYERS]
        if unknown or len(set(names)) != len(names):
            raise DataError(f"--lora_target {self.lora_target!r}: give different names of Baichuan2's linear layers "
                            f"({', '.join(LORA_LAYERS)})")

    def target_modules(self) -> list[str]:
        return [name.strip() for name in self.lora_target.split(",")]

    def identity(self) -> dict | None:
        """The adapter's shape and scale (an adapter resumes only with the same ones); None for full fine-tuning."""
        if not self.use_lora:
            return None
        return {"rank": self.lora_rank, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target": self.target_modules()}


@dataclass(kw_only=True)
class RunFlags:
    """Our training flags beside TrainingArguments' (recipe.TrainingFlags adds them to it); `__post_init__` only
    validates."""

    output_dir: str = field(metadata={"help": "Where checkpoints, the final model, logs and train_summary.json go; a "
                                              "folder that holds another run is refused."})
    resume_from_checkpoint: str | None = field(metadata={"help": "auto: continue from the latest complete "
                                                                 "checkpoint-N in --output_dir, if any; or a "
                                                                 "checkpoint folder."})
    global_batch_size: int = field(metadata={"help": "Reviews per optimizer step over all processes: sets the batch "
                                                     "per device (at most --per_device_train_batch_size) and the "
                                                     "accumulation; 0: both as given."})
    warmup_ratio: float | None = field(metadata={"help": "Share of the steps for the linear warmup, in [0, 1) (the "
                                                         "original recipe's flag; passed on as --warmup_steps)."})
    train_sampling_strategy: str | None = field(default=None,
                                                metadata={"help": "random, sequential, group_by_length or "
                                                                  "batch_rebalance; unset: group_by_length with "
                                                                  "--padding dynamic, else random."})
    eval_points_per_epoch: int = field(metadata={"help": "Evaluate this many times per epoch, evenly spaced (sets "
                                                         "--eval_strategy steps and --eval_steps); 0: as given."})

    def __post_init__(self):
        check_run_flags(self)


def check_run_flags(flags: object) -> None:
    """RunFlags' checks, and the learning rate's, on TrainingFlags or on the fast parser's namespace (the same
    attributes)."""
    if flags.learning_rate <= 0:
        raise DataError(f"--learning_rate {flags.learning_rate}: must be more than 0")
    if flags.warmup_ratio is not None and (not 0 <= flags.warmup_ratio < 1 or flags.warmup_steps):
        raise DataError("--warmup_ratio: give a fraction in [0, 1), and no --warmup_steps with it")
    if flags.global_batch_size < 0 or flags.eval_points_per_epoch < 0:
        raise DataError("--global_batch_size and --eval_points_per_epoch must be 0 or more")
    if flags.global_batch_size and flags.gradient_accumulation_steps != 1:
        raise DataError("--gradient_accumulation_steps: derived from --global_batch_size; give one of them "
                        "(--global_batch_size 0 to set the accumulation yourself)")


LORA_SETTINGS = tuple(item.name for item in dataclasses.fields(LoraArguments) if item.name != "use_lora")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def join_negative_numbers(flags: list[str]) -> list[str]:
    """`--flag -1.5e-3` as `--flag=-1.5e-3`: argparse takes a negative number in exponent form for a flag."""
    joined: list[str] = []
    for argument in flags:
        previous = joined[-1] if joined else ""
        if argument.startswith("-") and _is_number(argument) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={argument}"
        else:
            joined.append(argument)
    return joined


def split_recipe_argument(argv: list[str]) -> tuple[Path | None, list[str]]:
    """The recipe file among the arguments (the first YAML file that is no flag's value), else None; and the
    remaining flags, negative numbers joined to their flags. Launchers may put flags such as `--local_rank=0`
    before it."""
    for index, argument in enumerate(argv):
        previous = argv[index - 1] if index else ""
        is_value = previous.startswith("-") and "=" not in previous
        if argument.endswith(RECIPE_SUFFIXES) and not argument.startswith("-") and not is_value:
            return Path(argument), join_negative_numbers(argv[:index] + argv[index + 1:])
    return None, join_negative_numbers(argv)


def apply_recipe(parser: ArgumentParser, recipe_path: Path) -> None:
    """The recipe file's values become the parser's defaults (so `--help` shows them), the LoRA recipe's beneath
    them; a setting of the recipe is no longer required on the command line."""
    lora_recipe = read_recipe_file(DEFAULT_LORA_RECIPE)
    values = {name: lora_recipe[name] for name in LORA_SETTINGS if name in lora_recipe}
    values |= read_recipe_file(recipe_path)
    unknown = sorted(set(values) - {action.dest for action in parser._actions})
    if unknown:
        raise DataError(f"{recipe_path}: unknown setting {unknown[0]!r} (see python train.py --help)")
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False


def _light_hf_argument_parser() -> type:
    """transformers' HfArgumentParser, loaded from its file alone: `import transformers` would load torch."""
    package = Path(importlib.util.find_spec("transformers").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("_hf_argparser", package / "hf_argparser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HfArgumentParser


def fast_parser(recipe_path: Path) -> ArgumentParser | None:
    """train.py's parser as recipe.recipe_parser builds it, without importing transformers; None when
    training_arguments.json describes another transformers version than the one installed."""
    recorded = json.loads(TRAINING_ARGUMENTS_FILE.read_text(encoding="utf-8"))
    if recorded["transformers"] != importlib.metadata.version("transformers"):
        return None
    hf_argument_parser = _light_hf_argument_parser()
    parser = hf_argument_parser((ModelArguments, DataArguments, LoraArguments), description=DESCRIPTION)
    # TrainingFlags: TrainingArguments' fields in order, ours in place of those we redefine, then our new ones.
    ours = {item.name: item for item in dataclasses.fields(RunFlags)}
    hints = get_type_hints(RunFlags)
    for item in ours.values():
        item.type = hints[item.name]
    redefined = set(ours)
    for action in recorded["actions"]:
        options, name = action.pop("option_strings"), action["dest"]
        if name in ours:
            hf_argument_parser._parse_dataclass_field(parser, ours.pop(name))
        elif name not in redefined:
            if "type" in action:
                action["type"] = ARGUMENT_TYPES.get(action["type"])
            parser.add_argument(*options, **action)
    for item in ours.values():
        hf_argument_parser._parse_dataclass_field(parser, item)
    apply_recipe(parser, recipe_path)
    return parser


def check_values(namespace: Namespace) -> None:
    """The checks our dataclasses make when built (DataError), on the fast parser's values."""
    for kind in (ModelArguments, DataArguments, LoraArguments):
        kind(**{item.name: getattr(namespace, item.name) for item in dataclasses.fields(kind)})
    check_run_flags(namespace)


def check_flags(argv: list[str]) -> None:
    """Answer `--help`, and stop at an unknown flag or a bad value, with the fast parser (argparse exits then; a
    value our checks refuse exits with a one-line error).

    A recipe file that cannot be read is left to recipe.parse_recipe, which reports it (once per machine).
    """
    recipe_path, flags = split_recipe_argument(argv)
    try:
        parser = fast_parser(recipe_path or DEFAULT_RECIPE)
    except DataError:
        return
    if parser is not None:
        namespace = parser.parse_args(flags)
        code = report_errors(lambda: check_values(namespace) or 0)
        if code:
            sys.exit(code)
