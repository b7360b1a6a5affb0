"""Training batches: encoded examples right-padded to the batch's longest (dynamic) or to a fixed length (original)."""

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from tuning.data.prompt import IGNORE_INDEX, PADDING_MODES, EncodedExample


class EncodedDataset(Dataset):
    """Encoded examples as the Trainer's dataset: items `{"input_ids": [...], "labels": [...]}`."""

    def __init__(self, examples: list[EncodedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


@dataclass(frozen=True)
class PaddingCollator:
    """Right padding: `pad_token_id` in input_ids, 0 in attention_mask, IGNORE_INDEX in labels.

    "dynamic" pads each batch to its longest sample; "max_length" pads every batch to `max_length`, as the
    original recipe did (its pad-to-1024 is what the benchmarks compare against).
    """

    pad_token_id: int
    padding: str = "dynamic"
    max_length: int | None = None

    def __post_init__(self):
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}, got {self.padding!r}")
        if self.padding == "max_length" and not self.max_length:
            raise ValueError("padding='max_length' needs max_length")

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(feature["input_ids"]) for feature in features)
        width = self.max_length if self.padding == "max_length" else longest
        if longest > width:
            raise ValueError(f"an example has {longest} tokens, more than max_length {width}")
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :length] = 1
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
