"""The original recipe's prompt: `[user] + encode("{review} -> ") + [assistant]`, target `encode(label) + [eos]`."""

from dataclasses import dataclass

from tuning.runtime.errors import DataError

IGNORE_INDEX = -100
LABEL_WORDS = {1: "积极", 0: "消极"}  # waimai_10k label -> answer word
WAIMAI_LABEL_WORDS = (LABEL_WORDS[1], LABEL_WORDS[0])  # what make_data.py writes: positive first
DEFAULT_LABEL_WORDS = ",".join(WAIMAI_LABEL_WORDS)  # as the --label_words flag
DEFAULT_TEMPLATE = "{review} -> "  # the original recipe's prompt
PADDING_MODES = ("dynamic", "max_length")  # of training batches: to the longest example, or to max_length


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt, the target ids on the answer
    truncated: bool  # the review was shortened to fit max_length


@dataclass(frozen=True)
class PromptFormat:
    user_token_id: int
    assistant_token_id: int
    eos_token_id: int
    template: str = DEFAULT_TEMPLATE
    label_words: tuple[str, ...] = WAIMAI_LABEL_WORDS

    @classmethod
    def from_config(cls, config, **overrides) -> "PromptFormat":
        """Special-token ids from a model config (`user_token_id`, `assistant_token_id`, `eos_token_id`)."""
        return cls(
            user_token_id=config.user_token_id,
            assistant_token_id=config.assistant_token_id,
            eos_token_id=config.eos_token_id,
            **overrides,
        )

    def __post_init__(self):
        if self.template.count("{review}") != 1:
            raise ValueError(f"prompt template must contain '{{review}}' once: {self.template!r}")

    def prompt_ids(self, tokenizer, review: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
        """Prompt ids with the chat tokens; when longer than `max_tokens`, the review is cut, the template's tail kept."""
        body = tokenizer.encode(self.template.format(review=review), add_special_tokens=False)
        truncated = max_tokens is not None and len(body) + 2 > max_tokens
        if truncated:
            tail = self.template.split("{review}")[1]
            tail_ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
            keep = max_tokens - 2 - len(tail_ids)
            if keep < 1:
                raise ValueError(f"max length {max_tokens} leaves no room for the review")
            body = body[:keep] + tail_ids
        return [self.user_token_id, *body, self.assistant_token_id], truncated

    def label_ids(self, tokenizer, label_word: str) -> list[int]:
        """The answer word's ids, without eos (what label scoring compares)."""
        return tokenizer.encode(label_word, add_special_tokens=False)

    def encode_example(self, tokenizer, review: str, label_word: str, max_length: int) -> EncodedExample:
        """Training example: loss only on `label_ids + [eos]`."""
        target = [*self.label_ids(tokenizer, label_word), self.eos_token_id]
        prompt, truncated = self.prompt_ids(tokenizer, review, max_length - len(target))
        return EncodedExample(
            input_ids=prompt + target,
            labels=[IGNORE_INDEX] * len(prompt) + target,
            truncated=truncated,
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
