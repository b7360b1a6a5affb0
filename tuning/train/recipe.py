"""A training run's settings: a recipe file (configs/*.yaml) plus `--flag value` overrides, parsed without side effects.

Parsing builds only the dataclasses below; nothing touches a device, a process group or `os.environ`. The
TrainingArguments that the Trainer needs (whose own `__post_init__` initialises the device) are built from them by
`training_arguments()` when training starts, for the device found then.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from tuning.data.collate import PADDING_MODES
from tuning.data.prompt import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE
from tuning.run_layout import read_recipe_file, recipe_file
from tuning.runtime.errors import DataError

DEFAULT_RECIPE, DEFAULT_LORA_RECIPE = recipe_file(), recipe_file(lora=True)
RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="models/Baichuan2-7B-Base",
        metadata={"help": "Baichuan2 model folder to fine-tune: config.json, weights and tokenizer.model "
                          "(Baichuan2-7B-Base, or the tiny demo base made by `python -m tuning.model.tiny`)."},
    )


@dataclass
class DataArguments:
    train_data: str = field(
        default="data/train.jsonl",
        metadata={"help": 'Training reviews: JSONL, one {"review": ..., "label": "积极"|"消极"} per line '
                          "(make_data.py writes it)."},
    )
    eval_data: str = field(
        default="data/eval.jsonl",
        metadata={"help": "Eval reviews, same format: eval loss and label-scoring accuracy during training and "
                          "at the end. An empty string turns evaluation off."},
    )
    model_max_length: int = field(
        default=1024,
        metadata={"aliases": ["--max_seq_length"],
                  "help": "Longest example in tokens (prompt + answer + eos). A longer review is cut in its prompt "
                          "part, never dropped; the number cut is reported."},
    )
    padding: str = field(
        default="dynamic",
        metadata={"choices": PADDING_MODES,
                  "help": "dynamic: pad each batch to its longest example, batches grouped by length; "
                          "max_length: pad every batch to --model_max_length, as the original recipe did."},
    )
    logits_at_labels_only: bool | None = field(
        default=None,
        metadata={"help": "Compute the vocabulary logits only where a label is set (the answer tokens). "
                          "Default: on with --padding dynamic, off with max_length (the original's full logits)."},
    )
    prompt_template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={"help": "Prompt text around the review; must contain {review} once."},
    )
    label_words: str = field(
        default=DEFAULT_LABEL_WORDS,
        metadata={"help": "Answer words, positive first, comma-separated. Data labels are these words or "
                          "make_data.py's 积极/消极, mapped to them in order."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training reviews (quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N eval reviews only."}
    )

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


@dataclass
class LoraArguments:
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter (peft) instead of every weight: the base model stays frozen (in bf16 "
                          "where the device has it), the adapter trains in fp32. Checkpoints hold the adapter; the end "
                          "of the run writes the merged model in the official layout to --output_dir and the adapter "
                          "alone to --output_dir/adapter. Without a recipe file, --use_lora true uses "
                          "configs/baichuan2_7b_lora.yaml (learning rate 1e-4). See docs/lora.md."},
    )
    lora_rank: int = field(
        default=8,
        metadata={"help": "Rank r of each adapter (an r x in matrix A and an out x r matrix B). 8 as in peft and "
                          "LLaMA-Factory: a two-word answer needs little capacity; on every projection of the 7B it "
                          "trains 17.9M parameters, 0.24%% of its weights."},
    )
    lora_alpha: int = field(
        default=16,
        metadata={"help": "The adapter's output is scaled by lora_alpha / lora_rank; 16 = 2 x the default rank "
                          "(LLaMA-Factory's default)."},
    )
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "Dropout on the adapter's input while training, in [0, 1): light regularisation for "
                          "10,000 short reviews."},
    )
    lora_target: str = field(
        default=",".join(LORA_LAYERS),
        metadata={"help": "Comma-separated names of the linear layers that get an adapter. Default: every attention "
                          "and MLP projection of each decoder layer (the QLoRA paper found adapters on every linear "
                          "layer needed to match full fine-tuning) rather than the official script's W_pack only, for "
                          "4.3x its adapter parameters (still 0.24%% of the 7B)."},
    )

    def __post_init__(self):
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


@dataclass
class TrainingFlags(TrainingArguments):
    """Every TrainingArguments flag plus the recipe's own, held as parsed: `__post_init__` only validates.

    `training_arguments()` turns them into the TrainingArguments that the Trainer uses.
    """

    output_dir: str | None = field(
        default="output/baichuan2-7b-waimai",
        metadata={"help": "Where checkpoints, the final model, logs, curves and train_summary.json go. "
                          "A folder that holds another run (other model or data) is refused."},
    )
    resume_from_checkpoint: str | None = field(
        default="auto",
        metadata={"help": "auto: continue from the latest complete checkpoint-N in --output_dir when there is one "
                          "(an interrupted save is skipped, never deleted), else start fresh; or a checkpoint folder."},
    )
    global_batch_size: int = field(
        default=0,
        metadata={"help": "Reviews per optimizer step over all processes. When set, --per_device_train_batch_size "
                          "is the largest batch one device may take, and the batch per device and the gradient "
                          "accumulation are derived from the number of processes, so that any device count trains "
                          "the same steps. 0: use --per_device_train_batch_size and --gradient_accumulation_steps "
                          "as given."},
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "The original recipe's flag: share of the steps for the linear warmup, in [0, 1); "
                          "transformers 5 reads it from --warmup_steps given as a fraction."},
    )
    train_sampling_strategy: str | None = field(
        default=None,
        metadata={"help": "random, sequential, group_by_length or batch_rebalance. "
                          "Default: group_by_length with --padding dynamic, random otherwise."},
    )
    eval_points_per_epoch: int = field(
        default=0,
        metadata={"help": "Evaluate this many times per epoch, evenly spaced (sets --eval_strategy steps and "
                          "--eval_steps); 0 keeps --eval_strategy as given."},
    )

    def __post_init__(self):
        if self.warmup_ratio is not None and (not 0 <= self.warmup_ratio < 1 or self.warmup_steps):
            raise DataError("--warmup_ratio: give a fraction in [0, 1), and no --warmup_steps with it")
        if self.global_batch_size < 0 or self.eval_points_per_epoch < 0:
            raise DataError("--global_batch_size and --eval_points_per_epoch must be 0 or more")
        if self.global_batch_size and self.gradient_accumulation_steps != 1:
            raise DataError("--gradient_accumulation_steps: derived from --global_batch_size; give one of them "
                            "(--global_batch_size 0 to set the accumulation yourself)")


RECIPE_ARGUMENTS = (ModelArguments, DataArguments, LoraArguments, TrainingFlags)


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: ModelArguments
    data: DataArguments
    lora: LoraArguments
    training: TrainingFlags


def recipe_parser(description: str, recipe_path: Path | None = None) -> HfArgumentParser:
    """train.py's parser; the recipe file's values are its defaults (so `--help` shows them)."""
    parser = HfArgumentParser(RECIPE_ARGUMENTS, description=description)
    if recipe_path is not None:
        values = read_recipe_file(recipe_path)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"{recipe_path}: unknown setting {unknown[0]!r} (see python train.py --help)")
        parser.set_defaults(**values)
    return parser


def split_recipe_argument(argv: list[str]) -> tuple[Path | None, list[str]]:
    """The recipe file among the arguments (the first YAML file that is no flag's value), else None; and the
    remaining flags. Launchers may put flags such as `--local_rank=0` before it."""
    for index, argument in enumerate(argv):
        previous = argv[index - 1] if index else ""
        is_value = previous.startswith("-") and "=" not in previous
        if argument.endswith(RECIPE_SUFFIXES) and not argument.startswith("-") and not is_value:
            return Path(argument), argv[:index] + argv[index + 1:]
    return None, argv


def _parse_with(path: Path, flags: list[str], description: str) -> Recipe:
    parser = recipe_parser(description, path)
    try:
        model, data, lora, training = parser.parse_args_into_dataclasses(args=flags, look_for_args_file=False)
    except ValueError as error:
        raise DataError(str(error).strip().splitlines()[0]) from None
    return Recipe(path, model, data, lora, training)


def parse_recipe(argv: list[str], description: str) -> Recipe:
    """`[RECIPE.yaml] [--flag value ...]`: the recipe's values, overridden by the flags (pure: no device touched).

    Without a recipe file: DEFAULT_RECIPE, or DEFAULT_LORA_RECIPE when the flags turn LoRA on (its own learning rate).
    """
    path, flags = split_recipe_argument(argv)
    recipe = _parse_with(path or DEFAULT_RECIPE, flags, description)
    if path is None and recipe.lora.use_lora:
        recipe = _parse_with(DEFAULT_LORA_RECIPE, flags, description)
    return recipe


def batch_layout(global_batch: int, processes: int, largest_device_batch: int) -> tuple[int, int]:
    """(batch per device, gradient accumulation) that make `global_batch` on `processes` devices.

    The largest per-device batch that divides the per-process share and fits `largest_device_batch`, so that
    accumulation is 1 wherever memory allows.
    """
    if global_batch % processes:
        raise DataError(f"--global_batch_size {global_batch} cannot be split evenly over {processes} processes")
    per_process = global_batch // processes
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
