"""train.py's flags: the original recipe's, ours for data and batching, and every TrainingArguments flag."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from transformers_modify.training_args import adapt_training_args
from waimai.collate import PADDING_MODES
from waimai.devices import Device, detect_device
from waimai.fileio import DataError
from waimai.prompting import DEFAULT_TEMPLATE, LABEL_WORDS, PromptFormat


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="models/Baichuan2-7B-Base",
        metadata={"help": "Baichuan2 model folder to fine-tune: config.json, weights and tokenizer.model "
                          "(Baichuan2-7B-Base, or the tiny demo base made by `python -m waimai.tiny`)."},
    )


def prompt_format_from_flags(config, prompt_template: str, label_words: str) -> PromptFormat:
    """The prompt format of the --prompt_template and --label_words texts; a bad one is a DataError naming the flag."""
    words = tuple(word.strip() for word in label_words.split(","))
    if len(words) < 2 or not all(words) or len(set(words)) != len(words):
        raise DataError(f"--label_words {label_words!r}: give two or more different, non-empty words")
    try:
        return PromptFormat.from_config(config, template=prompt_template, label_words=words)
    except ValueError as error:
        raise DataError(f"--prompt_template: {error}") from None


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
        default=f"{LABEL_WORDS[1]},{LABEL_WORDS[0]}",
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

    def prompt_format(self, config) -> PromptFormat:
        """The prompt format with the model's special tokens; a bad template or word list is a DataError."""
        return prompt_format_from_flags(config, self.prompt_template, self.label_words)


@dataclass
class WaimaiTrainingArguments(TrainingArguments):
    """TrainingArguments with the recipe's defaults and per-device precision checks (transformers_modify)."""

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
    eval_strategy: str = field(
        default="epoch", metadata={"choices": ["no", "steps", "epoch"], "help": "When to evaluate on --eval_data."}
    )
    save_strategy: str = field(
        default="epoch",
        metadata={"choices": ["no", "steps", "epoch", "best"], "help": "When to save a checkpoint-N folder."},
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Logging integrations; TensorBoard logs go to OUTPUT_DIR/runs."}
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

    def __post_init__(self):
        # The recipe's --gradient_checkpointing is transformers 5's --activation_checkpointing.
        if self.gradient_checkpointing is not None and self.activation_checkpointing is None:
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1 or self.warmup_steps:
                raise DataError("--warmup_ratio: give a fraction in [0, 1), and no --warmup_steps with it")
            self.warmup_steps = self.warmup_ratio
        if self.label_names is None:  # the Trainer would also count `logits_at_labels_only` as a label
            self.label_names = ["labels"]
        # Accuracy comes from label scoring (WaimaiTrainer); gathering every eval logit (vocabulary-wide, per token
        # with --padding max_length) would only fill device memory.
        self.prediction_loss_only = True
        self.hardware: Device = detect_device()
        adapt_training_args(self, self.hardware)
        super().__post_init__()

    def choose_sampler(self, padding: str) -> None:
        """Length-grouped batches when padding is dynamic, unless a sampler was chosen."""
        if self.train_sampling_strategy is None:
            self.train_sampling_strategy = "group_by_length" if padding == "dynamic" else "random"
