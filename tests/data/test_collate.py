import pytest
import torch

from tuning.data.collate import EncodedDataset, PaddingCollator
from tuning.data.prompt import IGNORE_INDEX, EncodedExample

EXAMPLES = [
    EncodedExample(input_ids=[7, 10, 11, 12, 8, 30, 2], labels=[IGNORE_INDEX] * 5 + [30, 2], truncated=False),
    EncodedExample(input_ids=[7, 10, 8, 31, 2], labels=[IGNORE_INDEX] * 3 + [31, 2], truncated=False),
]


def test_dataset_items_are_the_encoded_lists():
    dataset = EncodedDataset(EXAMPLES)
    assert len(dataset) == 2
    assert dataset[1] == {"input_ids": [7, 10, 8, 31, 2], "labels": [IGNORE_INDEX] * 3 + [31, 2]}


def test_dynamic_padding_pads_right_to_the_longest_example():
    batch = PaddingCollator(pad_token_id=0)(list(EncodedDataset(EXAMPLES)))
    assert batch["input_ids"].tolist() == [[7, 10, 11, 12, 8, 30, 2], [7, 10, 8, 31, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    assert batch["labels"].tolist()[1] == [IGNORE_INDEX] * 3 + [31, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_max_length_padding_reproduces_the_fixed_width():
    batch = PaddingCollator(pad_token_id=0, padding="max_length", max_length=12)(list(EncodedDataset(EXAMPLES)))
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].sum().item() == 12
    # the loss sees only the answer and eos of each example
    assert (batch["labels"] != IGNORE_INDEX).sum().item() == 4


def test_an_example_longer_than_max_length_is_an_error():
    with pytest.raises(ValueError, match="more than max_length 6"):
        PaddingCollator(pad_token_id=0, padding="max_length", max_length=6)(list(EncodedDataset(EXAMPLES)))


def test_bad_padding_settings_are_rejected():
    with pytest.raises(ValueError, match="padding must be one of"):
        PaddingCollator(pad_token_id=0, padding="longest")
    with pytest.raises(ValueError, match="needs max_length"):
        PaddingCollator(pad_token_id=0, padding="max_length")
