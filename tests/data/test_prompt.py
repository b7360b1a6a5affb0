"""The original recipe's encoding, on the real Baichuan2 vocabulary."""

import pytest

from tuning.data.prompt import IGNORE_INDEX, PromptFormat
from tuning.model.baichuan import BaichuanConfig, BaichuanTokenizer


@pytest.fixture(scope="module")
def tokenizer(baichuan_tokenizer_model):
    return BaichuanTokenizer(vocab_file=str(baichuan_tokenizer_model))


@pytest.fixture(scope="module")
def prompt_format():
    return PromptFormat.from_config(BaichuanConfig())


def test_example_is_user_prompt_assistant_then_label_and_eos(tokenizer, prompt_format):
    example = prompt_format.encode_example(tokenizer, "很好吃", "积极", max_length=1024)
    prompt = tokenizer.encode("很好吃 -> ", add_special_tokens=False)
    target = tokenizer.encode("积极", add_special_tokens=False) + [2]
    assert example.input_ids == [195, *prompt, 196, *target]
    assert example.labels == [IGNORE_INDEX] * (len(prompt) + 2) + target
    assert not example.truncated


def test_long_review_is_cut_in_the_prompt_and_keeps_the_arrow(tokenizer, prompt_format):
    review = "送餐太慢了，" * 200
    example = prompt_format.encode_example(tokenizer, review, "消极", max_length=64)
    arrow = tokenizer.encode(" -> ", add_special_tokens=False)
    target = tokenizer.encode("消极", add_special_tokens=False) + [2]
    assert example.truncated
    assert len(example.input_ids) == 64
    assert example.input_ids[-len(target) - 1 - len(arrow) : -len(target)] == [*arrow, 196]
    assert example.labels[-len(target) :] == target


def test_custom_template_and_label_words(tokenizer):
    prompt_format = PromptFormat(user_token_id=195, assistant_token_id=196, eos_token_id=2, template="评论：{review}\n情感：", label_words=("好评", "差评"))
    ids, truncated = prompt_format.prompt_ids(tokenizer, "不错")
    assert ids == [195, *tokenizer.encode("评论：不错\n情感：", add_special_tokens=False), 196]
    assert not truncated


def test_template_must_hold_the_review_once():
    with pytest.raises(ValueError, match="once"):
        PromptFormat(user_token_id=195, assistant_token_id=196, eos_token_id=2, template="no placeholder")
