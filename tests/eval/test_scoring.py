import pytest
import torch
from tiny_models import MODEL_KINDS, VOCAB_SIZE, build_model

from tuning.eval.scoring import label_log_probs

PAD = 0


def direct_log_prob(model, prompt: list[int], candidate: list[int]) -> float:
    """Reference: one unpadded sequence, log_softmax at each candidate position, summed."""
    sequence = torch.tensor([prompt + candidate])
    with torch.no_grad():
        log_probs = model(input_ids=sequence).logits[0].float().log_softmax(-1)
    return sum(log_probs[len(prompt) - 1 + offset, token].item() for offset, token in enumerate(candidate))


def random_prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB_SIZE, (length,), generator=generator).tolist() for length in lengths]


@pytest.fixture(params=MODEL_KINDS)
def model(request):
    return build_model(request.param)


PROMPT_LENGTHS = [3, 41, 1, 17, 60, 8, 29, 2, 33, 12, 5]
CANDIDATES = [[10], [11, 12], [13, 14, 15, 16], [12]]


def test_scores_equal_direct_per_example_computation(model):
    prompts = random_prompts(PROMPT_LENGTHS)
    scores = label_log_probs(model, prompts, CANDIDATES, pad_token_id=PAD, batch_size=7)
    expected = torch.tensor([[direct_log_prob(model, p, c) for c in CANDIDATES] for p in prompts])
    assert scores.dtype == torch.float32 and scores.shape == (len(prompts), len(CANDIDATES))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-4)
    # Positions and padding matter for this model: the scores are far from uniform and differ per prompt.
    assert scores.std(dim=0).min() > 0.1


def test_batch_size_and_padding_do_not_change_scores(model):
    prompts = random_prompts(PROMPT_LENGTHS, seed=2)
    one_by_one = label_log_probs(model, prompts, CANDIDATES, pad_token_id=PAD, batch_size=1)
    batched = label_log_probs(model, prompts, CANDIDATES, pad_token_id=PAD, batch_size=7)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-4)


def test_single_token_candidates_need_one_pass_and_match(model):
    prompts = random_prompts([4, 25, 9])
    candidates = [[20], [21]]
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    scores = label_log_probs(model, prompts, candidates, pad_token_id=PAD, batch_size=3)
    handle.remove()
    assert len(calls) == 1
    expected = torch.tensor([[direct_log_prob(model, p, c) for c in candidates] for p in prompts])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-4)


def test_restores_training_mode_and_rejects_empty_candidate(model):
    model.train()
    label_log_probs(model, random_prompts([5]), [[7, 8]], pad_token_id=PAD)
    assert model.training
    with pytest.raises(ValueError, match="at least one token"):
        label_log_probs(model, random_prompts([5]), [[7], []], pad_token_id=PAD)
