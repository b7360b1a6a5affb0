"""Greedy generation for many prompts: batched, left-padded, cut at the first eos; parsing answers to label words."""

import torch
from transformers import GenerationConfig

from tuning.eval.batching import eval_mode, left_pad, length_sorted_batches
from tuning.eval.progress import reported


def greedy_config(max_new_tokens: int, pad_token_id: int, eos_token_id: int) -> GenerationConfig:
    """Plain greedy decoding: the neutral values override sampling or repetition settings of generation_config.json."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        repetition_penalty=1.0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


@torch.no_grad()
def greedy_generate(
    model,
    prompts: list[list[int]],
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int = 5,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[int]]:
    """The new token ids of each prompt's greedy continuation, without the eos and anything after it."""
    device = next(model.parameters()).device
    config = greedy_config(max_new_tokens, pad_token_id, eos_token_id)
    answers: list[list[int]] = [[] for _ in prompts]
    batches = length_sorted_batches([len(prompt) for prompt in prompts], batch_size)
    with eval_mode(model):
        for batch in reported(batches, "generation", progress):
            input_ids, attention_mask = left_pad([prompts[index] for index in batch], pad_token_id, device)
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
            for row, index in enumerate(batch):
                new_tokens = output[row, input_ids.shape[1] :].tolist()
                end = new_tokens.index(eos_token_id) if eos_token_id in new_tokens else len(new_tokens)
                answers[index] = new_tokens[:end]
    return answers


def parse_answer(text: str, label_words: tuple[str, ...]) -> str | None:
    """The label word the answer starts with (after whitespace), or None when it starts with none of them."""
    stripped = text.strip()
    matches = [word for word in label_words if stripped.startswith(word)]
    return max(matches, key=len) if matches else None
