"""Label scoring: the log-probability of each answer word right after each prompt, batched and padding-aware."""

import torch

from tuning.data.prompt import PromptFormat
from tuning.eval.batching import eval_mode, left_pad, length_sorted_batches, position_ids_from_mask
from tuning.eval.progress import reported


def candidate_ids(prompt_format: PromptFormat, tokenizer) -> list[list[int]]:
    """Each label word's token ids (without eos), in label-word order: what label scoring compares."""
    return [prompt_format.label_ids(tokenizer, word) for word in prompt_format.label_words]


@torch.no_grad()
def label_log_probs(
    model,
    prompts: list[list[int]],
    candidates: list[list[int]],
    pad_token_id: int,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Total log-probability of each candidate's tokens after each prompt: fp32, shape [len(prompts), len(candidates)].

    One forward pass over a batch of left-padded prompts scores the first token of every candidate; candidates
    longer than one token are finished by a second pass that reuses the prompts' KV cache. With `progress`, the count
    and the time left go to stderr now and then.
    """
    if not candidates or any(len(candidate) == 0 for candidate in candidates):
        raise ValueError("every candidate needs at least one token")
    device = next(model.parameters()).device
    scores = torch.empty(len(prompts), len(candidates), dtype=torch.float32)
    batches = length_sorted_batches([len(prompt) for prompt in prompts], batch_size)
    with eval_mode(model):
        for batch in reported(batches, "label scoring", progress):
            batch_prompts = [prompts[index] for index in batch]
            scores[torch.tensor(batch)] = _score_batch(model, batch_prompts, candidates, pad_token_id, device)
    return scores


def _score_batch(
    model, prompts: list[list[int]], candidates: list[list[int]], pad_token_id: int, device: torch.device
) -> torch.Tensor:
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    multi_token = any(len(candidate) > 1 for candidate in candidates)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=multi_token,
        logits_to_keep=1,
    )
    next_token = output.logits[:, -1].float().log_softmax(-1)
    first_ids = torch.tensor([candidate[0] for candidate in candidates], device=device)
    scores = next_token[:, first_ids]
    if multi_token:
        scores += _continuation_log_probs(model, output.cache, attention_mask, candidates, pad_token_id)
    return scores.cpu()


def _continuation_log_probs(
    model, cache, prompt_mask: torch.Tensor, candidates: list[list[int]], pad_token_id: int
) -> torch.Tensor:
    """Log-probability of every candidate token after the first, for all (prompt, candidate) pairs in one pass."""
    num_prompts, num_candidates = prompt_mask.shape[0], len(candidates)
    width = max(len(candidate) for candidate in candidates) - 1
    feed = torch.full((num_candidates, width), pad_token_id, dtype=torch.long)
    target = torch.zeros((num_candidates, width), dtype=torch.long)
    for row, candidate in enumerate(candidates):
        feed[row, : len(candidate) - 1] = torch.tensor(candidate[:-1])
        target[row, : len(candidate) - 1] = torch.tensor(candidate[1:])
    lengths = torch.tensor([len(candidate) - 1 for candidate in candidates])
    valid = torch.arange(width)[None, :] < lengths[:, None]
    # Row p * num_candidates + c holds candidate c after prompt p (the cache is repeated the same way).
    feed, target, valid = (t.repeat(num_prompts, 1).to(prompt_mask.device) for t in (feed, target, valid))
    cache.batch_repeat_interleave(num_candidates)
    repeated_mask = prompt_mask.repeat_interleave(num_candidates, dim=0)
    attention_mask = torch.cat([repeated_mask, valid.long()], dim=1)
    position_ids = repeated_mask.sum(-1, keepdim=True) + torch.arange(width, device=prompt_mask.device)
    logits = model(
        input_ids=feed,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
    ).logits
    token_log_probs = logits.float().log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
    return torch.where(valid, token_log_probs, 0.0).sum(-1).view(num_prompts, num_candidates)
