"""Training and eval files -> encoded examples in the original recipe's format; truncated reviews are counted."""

from dataclasses import dataclass
from pathlib import Path

from tuning.data.prompt import IGNORE_INDEX, WAIMAI_LABEL_WORDS, EncodedExample, PromptFormat
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_jsonl


@dataclass(frozen=True)
class EncodedSplit:
    examples: list[EncodedExample]
    answers: list[str]  # each example's answer word (the gold label of label scoring)
    truncated: int  # reviews shortened to fit model_max_length

    def prompts(self) -> list[list[int]]:
        """Each example's prompt ids (the part without a loss), truncated exactly as in training."""
        return [example.input_ids[: example.labels.count(IGNORE_INDEX)] for example in self.examples]


def answer_word(label: object, label_words: tuple[str, ...]) -> str | None:
    """The answer for a label: one of `label_words`, or make_data.py's 积极/消极 mapped to them in order."""
    if label in label_words:
        return label
    if len(label_words) == len(WAIMAI_LABEL_WORDS) and label in WAIMAI_LABEL_WORDS:
        return label_words[WAIMAI_LABEL_WORDS.index(label)]
    return None


def load_split(
    path: str | Path, tokenizer, prompt_format: PromptFormat, max_length: int, limit: int | None = None
) -> EncodedSplit:
    """Read `{"review", "label"}` records (the first `limit`), encode each; a bad record raises DataError."""
    label_words = prompt_format.label_words

    def problem(record: dict) -> str | None:
        if not isinstance(record["review"], str) or not record["review"].strip():
            return "review must be a non-empty string"
        if answer_word(record["label"], label_words) is None:
            return f"label {record['label']!r} is not one of {', '.join(label_words)}"
        return None

    records = read_jsonl(path, required_keys=("review", "label"), validate=problem)[:limit]
    answers = [answer_word(record["label"], label_words) for record in records]
    try:
        examples = [
            prompt_format.encode_example(tokenizer, record["review"], answer, max_length)
            for record, answer in zip(records, answers)
        ]
    except ValueError as error:
        raise DataError(f"--model_max_length {max_length}: {error}") from None
    return EncodedSplit(examples, answers, sum(example.truncated for example in examples))
