"""predict.py's work: read reviews (arguments, stdin or a file), label them with a tuned model, write the answers."""

import csv
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from tuning.data.prompt import PromptFormat, prompt_format_from_flags
from tuning.data.waimai_csv import clean_review, csv_records, decode_csv
from tuning.eval.evaluate import prompt_settings
from tuning.eval.inference import inference_setup, load_for_inference
from tuning.eval.output_paths import check_output_file
from tuning.eval.scoring import candidate_ids, label_log_probs
from tuning.model.baichuan import (
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanTokenizer,
    check_model_dir,
    load_tokenizer,
)
from tuning.run_layout import default_run_dirs, tuned_model_in, use_lora_from_environment
from tuning.runtime.devices import Device
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import atomic_writer, dump_jsonl, read_jsonl, write_jsonl

INPUT_SUFFIXES = (".jsonl", ".csv", ".txt")
OUTPUT_SUFFIXES = (".jsonl", ".csv")
OUTPUT_FIELDS = ("review", "label", "probability")
HOW_TO_TRAIN = "train one with `bash ds_run_bf16.sh`"


@dataclass(frozen=True)
class Reviews:
    texts: list[str]  # cleaned as make_data.py cleans training reviews; none empty; in input order
    empty: int  # reviews skipped because nothing was left after cleaning


@dataclass(frozen=True)
class Predictions:
    records: list[dict]  # {"review", "label", "probability"} per review, in input order
    probabilities: torch.Tensor  # softmax over the label words' scores, [reviews, label words]
    truncated: int  # reviews cut to fit the training run's model_max_length


def find_model(given: Path | None, default_runs: Sequence[Path]) -> Path:
    """`given` (a model folder or a training output folder), else the first of `default_runs` that holds a model.

    A training output folder gives its final model, else its latest complete checkpoint-N, as run_test.py finds it.
    """
    if given is not None:
        if not given.exists():
            raise DataError(f"--model {given}: not found; {HOW_TO_TRAIN} or give another folder")
        try:
            return tuned_model_in(given)
        except DataError:
            raise DataError(
                f"--model {given}: no model (config.json and weights) and no complete checkpoint-N folder"
            ) from None
    for run in default_runs:
        if run.is_dir():
            try:
                return tuned_model_in(run)
            except DataError:
                continue
    raise DataError(
        f"no tuned model in {' or '.join(str(run) for run in default_runs)}; {HOW_TO_TRAIN}, or pass --model"
    )


def clean_reviews(texts: Iterable[str]) -> Reviews:
    """Each text cleaned like a training review (control characters out, whitespace stripped); empty ones counted."""
    cleaned = [clean_review(text) for text in texts]
    kept = [text for text in cleaned if text]
    return Reviews(kept, len(cleaned) - len(kept))


def read_stdin(stream: IO[bytes]) -> Reviews:
    """One review per line, UTF-8 or GB18030."""
    text, _ = decode_csv(Path("<stdin>"), stream.read())
    reviews = clean_reviews(text.splitlines())
    if not reviews.texts:
        raise DataError(f"no reviews on stdin ({reviews.empty} empty lines)")
    return reviews


def read_input_file(path: Path) -> Reviews:
    """Reviews from a .jsonl (`review` field), .csv (`review` column, any case) or .txt file (one per line)."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise DataError(f"--input {path}: the name must end in .jsonl, .csv or .txt")
    if not path.is_file():
        raise DataError(f"--input {path}: file not found")
    raw = path.read_bytes()
    text = _utf8_text(path, raw) if suffix == ".jsonl" else decode_csv(path, raw)[0]
    if not text.strip():
        raise DataError(f"--input {path}: the file is empty")
    if suffix == ".jsonl":
        texts = _jsonl_reviews(path)
    elif suffix == ".csv":
        texts = [fields[0] for _, fields in csv_records(path, text, ("review",))]
    else:
        texts = text.splitlines()
    reviews = clean_reviews(texts)
    if not reviews.texts:
        raise DataError(f"--input {path}: no reviews ({reviews.empty} empty)")
    return reviews


def _utf8_text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"--input {path}: line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); "
                        "JSONL files are UTF-8") from None


def _jsonl_reviews(path: Path) -> list[str]:
    def problem(record: dict) -> str | None:
        return None if isinstance(record["review"], str) else "review must be a string"

    return [record["review"] for record in read_jsonl(path, required_keys=("review",), validate=problem)]


@dataclass
class Classifier:
    """A tuned model with the prompt template, label words and length limit its training run recorded."""

    model: BaichuanForCausalLM
    tokenizer: BaichuanTokenizer
    prompt_format: PromptFormat
    model_max_length: int
    batch_size: int

    @classmethod
    def load(cls, model_dir: Path, device: Device, dtype: torch.dtype, batch_size: int = 16) -> "Classifier":
        settings, _, _ = prompt_settings({}, model_dir)
        tokenizer = load_tokenizer(model_dir)
        config = BaichuanConfig.from_pretrained(str(model_dir))
        prompt_format = prompt_format_from_flags(config, settings["prompt_template"], settings["label_words"])
        model = load_for_inference(model_dir, device, dtype)
        return cls(model, tokenizer, prompt_format, settings["model_max_length"], batch_size)

    def prompts(self, reviews: list[str]) -> tuple[list[list[int]], int]:
        """Each review's prompt ids, cut as in training so that any answer + eos still fits; and how many were cut.

        run_test.py leaves room for each eval review's own gold answer instead: the same cut when the label words
        are equally long in tokens.
        """
        room = self.model_max_length - 1 - max(len(ids) for ids in candidate_ids(self.prompt_format, self.tokenizer))
        try:
            encoded = [self.prompt_format.prompt_ids(self.tokenizer, review, room) for review in reviews]
        except ValueError as error:
            raise DataError(f"model_max_length {self.model_max_length} of the training run: {error}") from None
        return [ids for ids, _ in encoded], sum(cut for _, cut in encoded)

    def classify(self, reviews: list[str], progress: bool = False) -> Predictions:
        """Label scoring as in run_test.py: the label word with the highest log-probability after the prompt."""
        return self.classify_prompts(reviews, *self.prompts(reviews), progress=progress)

    def classify_prompts(
        self, reviews: list[str], prompts: list[list[int]], truncated: int, progress: bool = False
    ) -> Predictions:
        """classify() for reviews whose prompts (and how many were cut) are already known; with `progress`, the
        count and the time left go to stderr now and then."""
        scores = label_log_probs(
            self.model, prompts, candidate_ids(self.prompt_format, self.tokenizer), self.model.config.pad_token_id,
            self.batch_size, progress=progress,
        )
        probabilities = scores.softmax(dim=-1)
        best, chosen = probabilities.max(dim=-1)
        words = self.prompt_format.label_words
        records = [
            {"review": review, "label": words[index], "probability": round(probability, 4)}
            for review, index, probability in zip(reviews, chosen.tolist(), best.tolist())
        ]
        return Predictions(records, probabilities, truncated)


def write_predictions(records: list[dict], output: Path | None, stdout: IO[str]) -> None:
    """JSON lines to `stdout`, or to `output` (.jsonl, or .csv with a BOM so that spreadsheets read it as UTF-8)."""
    if output is None:
        dump_jsonl(records, stdout)
    elif output.suffix.lower() == ".jsonl":
        write_jsonl(output, records)
    else:
        with atomic_writer(output) as handle:
            handle.write("\ufeff")
            writer = csv.DictWriter(handle, OUTPUT_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)


def predict(
    *,
    reviews: list[str],
    input_file: Path | None,
    output: Path | None,
    model: Path | None,
    batch_size: int,
    dtype: str,
    stdin: IO[bytes],
    stdout: IO[str],
) -> int:
    """predict.py: the reviews given (else those of `input_file`, else of stdin) labelled by `model` (else the latest
    tuned run, see find_model), as JSON lines to `stdout` or to the file `output`; notes go to stderr.

    Everything that can be checked is checked before the weights load: the output path, the model folder, the
    reviews, and whether the model fits in memory in the precision `dtype` (a --dtype choice) asks for.
    """
    if reviews and input_file:
        raise DataError("give reviews as arguments or with --input FILE, not both")
    if output:
        check_output_file(output, "--output", OUTPUT_SUFFIXES, input_file)
    model_dir = check_model_dir(find_model(model, default_run_dirs(use_lora_from_environment())))
    if reviews:
        given = clean_reviews(reviews)
        if not given.texts:
            raise DataError(f"no reviews: the {given.empty} given are empty")
    elif input_file:
        given = read_input_file(input_file)
    else:
        if stdin.isatty():
            print("reading reviews from stdin, one per line; end with Ctrl-D", file=sys.stderr)
        given = read_stdin(stdin)
    setup = inference_setup(dtype, [model_dir])
    classifier = Classifier.load(model_dir, setup.device, setup.dtype, batch_size)
    shown = model_dir.relative_to(Path.cwd()) if model_dir.is_relative_to(Path.cwd()) else model_dir
    print(f"model {shown} ({setup.describe()}), label words {','.join(classifier.prompt_format.label_words)}: "
          f"{len(given.texts)} reviews", file=sys.stderr)
    prompts, truncated = classifier.prompts(given.texts)
    longest_answer = max(len(ids) for ids in candidate_ids(classifier.prompt_format, classifier.tokenizer))
    classifier.batch_size = setup.batch_size(
        batch_size, len(prompts), classifier.model.config, max(map(len, prompts)) + longest_answer
    )
    predictions = classifier.classify_prompts(given.texts, prompts, truncated, progress=input_file is not None)
    if given.empty:
        print(f"skipped {given.empty} empty reviews", file=sys.stderr)
    if predictions.truncated:
        print(f"cut {predictions.truncated} reviews longer than model_max_length {classifier.model_max_length}, "
              "as in training", file=sys.stderr)
    write_predictions(predictions.records, output, stdout)
    if output:
        print(f"wrote {output}", file=sys.stderr)
    return 0
