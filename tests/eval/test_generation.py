import pytest
import torch
from tiny_models import MODEL_KINDS, VOCAB_SIZE, build_model

from tuning.eval.generation import greedy_generate, parse_answer

PAD = 0


def reference_greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id: int | None) -> list[int]:
    """Hand-written greedy loop on one unpadded sequence: full recompute, argmax of the last logit, stop at eos."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
            if next_token == eos_token_id:
                break
            sequence.append(next_token)
    return sequence[len(prompt) :]


@pytest.fixture(params=MODEL_KINDS)
def model(request):
    model = build_model(request.param, seed=3)
    # A released generation_config.json may ask for sampling and a repetition penalty; generation stays greedy.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.3
    model.generation_config.top_p = 0.85
    model.generation_config.repetition_penalty = 1.3
    return model


def test_left_padded_batches_equal_unpadded_greedy_generation(model):
    generator = torch.Generator().manual_seed(5)
    lengths = [2, 37, 9, 1, 24, 6, 15]
    prompts = [torch.randint(3, VOCAB_SIZE, (length,), generator=generator).tolist() for length in lengths]
    # Use as eos a token that prompt 1 produces third, so that one row stops early inside its batch.
    eos = reference_greedy(model, prompts[1], 6, eos_token_id=None)[2]
    expected = [reference_greedy(model, prompt, 6, eos) for prompt in prompts]

    batched = greedy_generate(model, prompts, pad_token_id=PAD, eos_token_id=eos, max_new_tokens=6, batch_size=4)

    assert batched == expected
    assert len(batched[1]) <= 2 and max(len(answer) for answer in batched) == 6


def test_parse_answer():
    words = ("积极", "消极")
    assert parse_answer(" 积极", words) == "积极"
    assert parse_answer("消极。", words) == "消极"
    assert parse_answer("抱歉，作为一个大语言", words) is None
    assert parse_answer("这条评论是积极的", words) is None
    assert parse_answer("", words) is None
