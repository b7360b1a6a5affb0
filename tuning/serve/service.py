"""What the service answers: predict.py's label scoring with the tuned model, and with --compare the base model's."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from tuning.data.prompt import PromptFormat
from tuning.eval.comparison import recorded_base_model
from tuning.eval.predicting import Classifier
from tuning.run_layout import MANIFEST_NAME
from tuning.runtime.devices import Device
from tuning.runtime.errors import DataError


@dataclass(frozen=True)
class ServedModels:
    """The tuned model, and the base model it was trained from when answers are compared."""

    tuned: Classifier
    base: Classifier | None
    model_dir: Path
    base_dir: Path | None
    device: Device
    dtype: torch.dtype

    @property
    def label_words(self) -> tuple[str, ...]:
        return self.tuned.prompt_format.label_words

    def answer(self, requests: list[list[str]]) -> list[dict]:
        """One answer per request, `{"predictions": [...], "truncated": n}`; all the reviews are scored together.

        Each prediction is predict.py's `{"review", "label", "probability"}`, plus `"base": {"label",
        "probability"}` when the base model is loaded; `truncated` counts the request's reviews cut as in training.
        """
        reviews = [review for request in requests for review in request]
        tuned = self.tuned.classify(reviews)
        records = tuned.records
        if self.base is not None:
            base_records = self.base.classify(reviews).records
            records = [
                record | {"base": {"label": base["label"], "probability": base["probability"]}}
                for record, base in zip(records, base_records)
            ]
        answers, start = [], 0
        for request, truncated in zip(requests, self._truncated_per_request(requests, tuned.truncated)):
            answers.append({"predictions": records[start : start + len(request)], "truncated": truncated})
            start += len(request)
        return answers

    def _truncated_per_request(self, requests: list[list[str]], total: int) -> list[int]:
        """How many reviews of each request were cut; the prompts are encoded again only when some were."""
        if len(requests) == 1 or total == 0:
            return [total] + [0] * (len(requests) - 1)
        return [self.tuned.prompts(request)[1] for request in requests]


def base_model_of(model_dir: Path) -> Path:
    """The base model a tuned model was trained from, as its run folder's run_manifest.json records it."""
    recorded = recorded_base_model(model_dir)
    if recorded is None:
        raise DataError(f"--compare: {model_dir} has no {MANIFEST_NAME} naming its base model; pass --base_model DIR")
    manifest, base = recorded
    if not base.is_dir():
        raise DataError(f"--compare: the base model {base} recorded in {manifest} is not there; pass --base_model DIR")
    return base


def load_models(
    model_dir: Path, base_dir: Path | None, device: Device, dtype: torch.dtype, batch_size: int
) -> ServedModels:
    """The tuned model and, when `base_dir` is given, the base model scored with the tuned model's prompt settings
    (template, label words, length limit), as run_test.py compares them."""
    tuned = Classifier.load(model_dir, device, dtype, batch_size)
    base = None
    if base_dir is not None:
        base = Classifier.load(base_dir, device, dtype, batch_size)
        prompt_format = tuned.prompt_format
        base = dataclasses.replace(
            base,
            prompt_format=PromptFormat.from_config(
                base.model.config, template=prompt_format.template, label_words=prompt_format.label_words
            ),
            model_max_length=tuned.model_max_length,
        )
    return ServedModels(tuned, base, model_dir, base_dir, device, dtype)
