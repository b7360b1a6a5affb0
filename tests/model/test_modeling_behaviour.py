"""Our Baichuan2 model behaves like a transformers model: recorded outputs, resizing, export, compile, loss, Auto classes."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB_SIZE, tiny_baichuan
from transformers import AutoModel, CompileConfig
from transformers.modeling_outputs import BaseModelOutputWithPast

from tuning.model.baichuan import BaichuanForCausalLM, BaichuanModel

LAYERS, HEADS, HIDDEN = 2, 4, 128  # tiny_baichuan's shape


@pytest.fixture()
def model():
    return tiny_baichuan(seed=1)


@pytest.fixture()
def ids():
    return torch.randint(3, VOCAB_SIZE, (2, 7), generator=torch.Generator().manual_seed(2))


def _logits(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


def test_forward_records_hidden_states_and_attentions(model, ids):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        last = model.model(input_ids=ids).last_hidden_state
    assert len(out.hidden_states) == LAYERS + 1 and all(h.shape == (2, 7, HIDDEN) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))
    torch.testing.assert_close(out.hidden_states[-1], last)
    assert len(out.attentions) == LAYERS and all(a.shape == (2, HEADS, 7, 7) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, HEADS, 7))
    assert out.attentions[0][..., 0, 1:].abs().max() == 0  # causal: the first position sees only itself
    plain = model(input_ids=ids)
    assert plain.hidden_states is None and plain.attentions is None


def test_config_flags_record_hidden_states(model, ids):
    model.config.output_hidden_states = True
    with torch.no_grad():
        assert len(model(input_ids=ids).hidden_states) == LAYERS + 1


def test_generate_returns_hidden_states_and_attentions_per_step(model, ids):
    model.set_attn_implementation("eager")
    out = model.generate(
        ids,
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
        output_hidden_states=True,
        output_attentions=True,
    )
    assert len(out.hidden_states) == len(out.attentions) == 3
    assert [len(step) for step in out.hidden_states] == [LAYERS + 1] * 3
    assert out.hidden_states[0][0].shape == (2, 7, HIDDEN) and out.hidden_states[2][-1].shape == (2, 1, HIDDEN)
    assert [len(step) for step in out.attentions] == [LAYERS] * 3
    assert out.attentions[0][0].shape == (2, HEADS, 7, 7) and out.attentions[2][1].shape == (2, HEADS, 1, 9)


def test_assisted_decoding_with_recorded_attentions_equals_greedy(model):
    model.set_attn_implementation("eager")
    prompt = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])  # repeats, so that prompt lookup proposes candidates
    greedy = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assisted = model.generate(
        prompt,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        prompt_lookup_num_tokens=2,
        return_dict_in_generate=True,
        output_attentions=True,
    )
    assert assisted.sequences.tolist() == greedy.tolist()
    assert len(assisted.attentions) == 6 and assisted.attentions[0][0].shape == (1, HEADS, 8, 8)


def test_sdpa_and_eager_give_the_same_logits(model, ids):
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    sdpa = _logits(model, ids, attention_mask=mask)
    model.set_attn_implementation("eager")
    torch.testing.assert_close(_logits(model, ids, attention_mask=mask)[mask.bool()], sdpa[mask.bool()])


def test_return_dict_false_gives_the_output_tuple(model, ids):
    labels = ids.clone()
    with torch.no_grad():
        as_dict = model(input_ids=ids, labels=labels, use_cache=False)
        as_tuple = model(input_ids=ids, labels=labels, use_cache=False, return_dict=False)
        base = model.model(input_ids=ids, use_cache=False, return_dict=False)
    assert type(as_tuple) is tuple and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert type(base) is tuple and len(base) == 1


def test_shift_labels_replace_the_shifted_labels(model, ids):
    labels = ids.clone()
    labels[:, :3] = -100
    # Targets that are not the next tokens: predict the current token at every other position.
    shift_labels = torch.where(torch.arange(7) % 2 == 0, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        shifted = model(input_ids=ids, labels=labels).loss
        same = model(input_ids=ids, labels=labels, shift_labels=F.pad(labels[:, 1:], (0, 1), value=-100)).loss
        other = model(input_ids=ids, labels=labels, shift_labels=shift_labels)
        sparse = model(input_ids=ids, labels=labels, shift_labels=shift_labels, logits_at_labels_only=True)
    torch.testing.assert_close(same, shifted)
    expected = F.cross_entropy(other.logits.reshape(-1, VOCAB_SIZE), shift_labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(other.loss, expected)
    assert not torch.allclose(other.loss, shifted)
    assert sparse.logits.shape == (int((shift_labels != -100).sum()), VOCAB_SIZE)
    torch.testing.assert_close(sparse.loss, other.loss)


def test_resize_token_embeddings_keeps_the_norm_head_and_generation(model, ids, tmp_path):
    before = _logits(model, ids)
    model.resize_token_embeddings(VOCAB_SIZE + 3)
    assert type(model.lm_head).__name__ == "NormHead" and model.get_output_embeddings() is model.lm_head
    assert model.lm_head.weight.shape == (VOCAB_SIZE + 3, HIDDEN) and model.config.vocab_size == VOCAB_SIZE + 3
    after = _logits(model, ids)
    torch.testing.assert_close(after[..., :VOCAB_SIZE], before)  # old rows keep their normalised logits
    new_token_prompt = torch.cat([ids, torch.full((2, 1), VOCAB_SIZE + 2)], dim=1)
    generated = model.generate(new_token_prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, 12) and int(generated.max()) < VOCAB_SIZE + 3
    model.save_pretrained(tmp_path)
    reloaded = BaichuanForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, new_token_prompt), _logits(model, new_token_prompt), rtol=0, atol=0)


def test_post_init_after_resize_keeps_the_resized_weights(model):
    """Building on a resized model (e.g. a subclass or a wrapper calling post_init()) must not draw the head anew."""
    model.resize_token_embeddings(VOCAB_SIZE + 10)
    head, embeddings = model.lm_head.weight.detach().clone(), model.model.embed_tokens.weight.detach().clone()
    model.post_init()
    assert torch.equal(model.lm_head.weight, head)
    assert torch.equal(model.model.embed_tokens.weight, embeddings)


def test_tie_weights_leaves_the_head_untied(model):
    model.tie_weights()
    model.resize_token_embeddings(VOCAB_SIZE + 1)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_torch_export_of_the_forward_pass(model, ids):
    exported = torch.export.export(model, args=(), kwargs={"input_ids": ids, "use_cache": False}, strict=False)
    with torch.no_grad():
        out = exported.module()(input_ids=ids, use_cache=False)
    torch.testing.assert_close(out.logits, _logits(model, ids, use_cache=False))


def test_compiled_static_cache_generation_equals_dynamic_cache_generation(model, ids):
    """`aot_eager` traces the whole forward with fullgraph=True, as inductor would, without a C++ build per test."""
    assert BaichuanForCausalLM._can_compile_fullgraph
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    dynamic = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True)
    compile_config._compile_all_devices = True  # generate compiles on CUDA-like devices only unless told
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    static = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        cache_implementation="static",
        compile_config=compile_config,
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert static.tolist() == dynamic.tolist()


def test_norm_head_eval_cache_follows_the_weight(model, ids):
    """The cached normalised head is recomputed after a dtype round trip, an in-place step and a new parameter."""
    head = model.lm_head
    expected = lambda: F.linear(model.model(input_ids=ids).last_hidden_state, F.normalize(head.weight, dim=-1))  # noqa: E731
    _logits(model, ids)
    model.to(torch.bfloat16).to(torch.float32)  # .data swaps: no version bump
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, ids), expected())
        head.weight[:5] = torch.randn(5, HIDDEN)  # an optimizer step in place
        torch.testing.assert_close(_logits(model, ids), expected())
        head.weight = torch.nn.Parameter(torch.randn(VOCAB_SIZE, HIDDEN))
        torch.testing.assert_close(_logits(model, ids), expected())


def test_padding_free_rows_equal_padded_rows(model):
    """A left-padded batch and the same rows packed into one row with restarting position_ids (no mask)."""
    generator = torch.Generator().manual_seed(4)
    lengths = [7, 3, 5, 1, 6]
    ids = torch.randint(3, VOCAB_SIZE, (len(lengths), 7), generator=generator)
    mask = (torch.arange(7) >= 7 - torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    padded = _logits(model, ids, attention_mask=mask, use_cache=False)[mask.bool()]
    packed = _logits(model, ids[mask.bool()][None], position_ids=positions, use_cache=False)[0]
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_automodel_loads_the_base_model(reference_dir):
    base = AutoModel.from_pretrained(str(reference_dir)).eval()
    full = BaichuanForCausalLM.from_pretrained(str(reference_dir)).eval()
    assert type(base) is BaichuanModel
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        out = base(input_ids=ids)
        assert isinstance(out, BaseModelOutputWithPast)
        torch.testing.assert_close(out.last_hidden_state, full.model(input_ids=ids).last_hidden_state, rtol=0, atol=0)
    assert type(AutoModel.from_config(full.config)) is BaichuanModel
