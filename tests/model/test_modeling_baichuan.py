"""Our Baichuan2 model against the official implementation's outputs on the tiny reference checkpoint."""

import json
import pickle
import shutil

import pytest
import torch
from remote_code import assert_works_as_remote_code
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tuning.model.baichuan import CODE_FILES, BaichuanForCausalLM, install_code, load_model
from tuning.model.baichuan import main as baichuan_main
from tuning.runtime.errors import DataError

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cases(reference_dir):
    return load_file(reference_dir / "cases.safetensors")


@pytest.fixture()
def model(reference_dir):
    return BaichuanForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32).eval()


def _eval_logits(model, cases):
    with torch.no_grad():
        return model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"]).logits


@pytest.mark.parametrize("use_safetensors", [True, False], ids=["safetensors", "sharded-bin"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_eval_logits_match_official(reference_dir, cases, use_safetensors, attn_implementation):
    model = BaichuanForCausalLM.from_pretrained(
        str(reference_dir), dtype=torch.float32, use_safetensors=use_safetensors, attn_implementation=attn_implementation
    ).eval()
    torch.testing.assert_close(_eval_logits(model, cases), cases["logits_eval"], **TOL)


def test_train_loss_and_gradient_norms_match_official(model, cases, reference_dir):
    model.train()
    loss = model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"]).loss
    torch.testing.assert_close(loss, cases["loss_train"], **TOL)
    loss.backward()
    names = json.loads((reference_dir / "grad_norm_names.json").read_text())
    params = dict(model.named_parameters())
    norms = torch.stack([params[name].grad.norm() for name in names])
    torch.testing.assert_close(norms, cases["grad_norms"], rtol=1e-4, atol=1e-4)


def test_eval_loss_matches_official(model, cases):
    with torch.no_grad():
        loss = model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"]).loss
    torch.testing.assert_close(loss, cases["loss_eval"], **TOL)


@pytest.mark.parametrize("use_cache, key", [(True, "generate_greedy"), (False, "generate_greedy_nocache")])
def test_greedy_generation_matches_official(model, cases, use_cache, key):
    prompt = cases["generate_prompt"]
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False, use_cache=use_cache
    )
    assert torch.equal(generated, cases[key])


def test_bf16_logits_match_official_bf16(reference_dir, cases):
    model = BaichuanForCausalLM.from_pretrained(str(reference_dir), dtype=torch.bfloat16).eval()
    real = cases["attention_mask"].bool()
    logits = _eval_logits(model, cases).float()
    torch.testing.assert_close(logits[real], cases["logits_eval_bf16"][real], rtol=0, atol=5e-2)


def test_padded_rows_equal_unpadded_rows(model, cases):
    """Right padding (training) and left padding (generation) leave the real positions unchanged."""
    padded = _eval_logits(model, cases)
    for row, length in enumerate(cases["attention_mask"].sum(-1).tolist()):
        ids = cases["input_ids"][row : row + 1, :length]
        with torch.no_grad():
            alone = model(input_ids=ids).logits[0]
            left_ids = torch.cat([torch.zeros(1, 16 - length, dtype=torch.long), ids], dim=1)
            left_mask = (left_ids != 0).long() if length < 16 else torch.ones_like(left_ids)
            left_mask[:, 16 - length :] = 1
            positions = (left_mask.cumsum(-1) - 1).clamp(min=0)
            left = model(input_ids=left_ids, attention_mask=left_mask, position_ids=positions).logits[0, 16 - length :]
        torch.testing.assert_close(padded[row, :length], alone, **TOL)
        torch.testing.assert_close(left, alone, **TOL)


def test_batched_left_padded_generation_equals_one_by_one(model, cases):
    rows = [cases["input_ids"][0, :9], cases["input_ids"][1, :5], cases["input_ids"][2, :7]]
    width = max(len(row) for row in rows)
    batch = torch.stack([torch.cat([torch.zeros(width - len(row), dtype=torch.long), row]) for row in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(row)), torch.ones(len(row))]) for row in rows]).long()
    batched = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for index, row in enumerate(rows):
        alone = model.generate(row[None], attention_mask=torch.ones(1, len(row), dtype=torch.long), max_new_tokens=6, do_sample=False)
        assert batched[index, width:].tolist() == alone[0, len(row) :].tolist()


def test_logits_at_labels_only_gives_the_same_loss_and_gradients(reference_dir, cases):
    batch = dict(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"])
    full = BaichuanForCausalLM.from_pretrained(str(reference_dir)).train()
    sparse = BaichuanForCausalLM.from_pretrained(str(reference_dir)).train()
    full_out = full(**batch)
    sparse_out = sparse(**batch, logits_at_labels_only=True)
    assert sparse_out.logits.shape == (9, 512)
    torch.testing.assert_close(sparse_out.loss, full_out.loss, **TOL)
    full_out.loss.backward()
    sparse_out.loss.backward()
    for (name, full_param), sparse_param in zip(full.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(sparse_param.grad, full_param.grad, **TOL, msg=name)


def test_num_items_in_batch_sums_over_the_accumulated_batch(model, cases):
    batch = dict(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"])
    with torch.no_grad():
        mean_loss = model(**batch).loss
        summed = model(**batch, num_items_in_batch=18, logits_at_labels_only=True).loss
    torch.testing.assert_close(summed, mean_loss * 9 / 18, **TOL)


def test_gradient_checkpointing_gives_the_same_gradients(reference_dir, cases):
    batch = dict(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"])
    plain = BaichuanForCausalLM.from_pretrained(str(reference_dir)).train()
    checkpointed = BaichuanForCausalLM.from_pretrained(str(reference_dir)).train()
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.model.layers[0].gradient_checkpointing
    plain(**batch).loss.backward()
    checkpointed(**batch).loss.backward()
    for (name, param), other in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(other.grad, param.grad, **TOL, msg=name)


def test_normhead_eval_leaves_the_stored_weight_untouched(model, cases):
    stored = model.lm_head.weight.detach().clone()
    eval_logits = _eval_logits(model, cases)
    assert torch.equal(model.lm_head.weight, stored)
    model.train()
    with torch.no_grad():
        train_logits = model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"]).logits
    torch.testing.assert_close(train_logits, eval_logits, **TOL)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    model.eval()
    torch.testing.assert_close(_eval_logits(model, cases), eval_logits, **TOL)


def test_save_pretrained_writes_the_official_layout_and_loads_back(model, cases, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BaichuanForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_baichuan.BaichuanForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_baichuan.BaichuanConfig"
    assert (tmp_path / "modeling_baichuan.py").is_file() and (tmp_path / "configuration_baichuan.py").is_file()
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(str(model.name_or_path) + "/model.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(reloaded) is BaichuanForCausalLM
    torch.testing.assert_close(_eval_logits(reloaded, cases), _eval_logits(model, cases), rtol=0, atol=0)


def test_copied_files_work_as_remote_code(reference_dir, cases, tmp_path):
    """The folder's own code, loaded by transformers with trust_remote_code, in a process that never imported ours."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in reference_dir.iterdir():
        shutil.copy(path, model_dir)
    install_code(model_dir)
    assert_works_as_remote_code(model_dir, cases, cases["logits_eval"], tmp_path)


def test_install_code_keeps_the_originals(reference_dir, tmp_path):
    shutil.copy(reference_dir / "config.json", tmp_path)
    (tmp_path / "modeling_baichuan.py").write_text("# official\n")
    install_code(tmp_path)
    assert (tmp_path / "modeling_baichuan.py.orig").read_text() == "# official\n"
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(CODE_FILES)
    install_code(tmp_path)
    assert (tmp_path / "modeling_baichuan.py.orig").read_text() == "# official\n"


def test_install_code_command_errors_are_one_line(reference_dir, tmp_path, capsys):
    assert baichuan_main(["install-code", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path} is not a model folder (no config.json)\n"
    shutil.copy(reference_dir / "config.json", tmp_path)
    (tmp_path / "modeling_baichuan.py").mkdir()  # a file that cannot be written: an OSError, exit code 1
    assert baichuan_main(["install-code", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "modeling_baichuan.py" in error and error.count("\n") == 1


class _RunsCode:
    """A pickle payload that would create a marker file if unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_executed(reference_dir, tmp_path):
    shutil.copy(reference_dir / "config.json", tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"unused")
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _RunsCode(str(marker))}, handle)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_model(tmp_path)
    assert not marker.exists()


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="weights"):
        load_model(tmp_path)


def test_eval_after_an_optimizer_step_through_a_flat_buffer_sees_the_new_head(model, cases):
    """DeepSpeed ZeRO-1/2 points parameters at a flat buffer and updates it through `.data`: no version bump."""
    flat = model.lm_head.weight.detach().clone().reshape(-1)
    model.lm_head.weight.data = flat.view_as(model.lm_head.weight)
    before = _eval_logits(model, cases)
    flat.data.copy_(torch.randn_like(flat))
    model.train()
    model(input_ids=cases["input_ids"][:1, :4])
    model.eval()
    after = _eval_logits(model, cases)
    assert not torch.allclose(after, before)
    with torch.no_grad():
        hidden = model.model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"]).last_hidden_state
        expected = torch.nn.functional.linear(hidden, torch.nn.functional.normalize(model.lm_head.weight, dim=-1))
    torch.testing.assert_close(after, expected, **TOL)


def test_z_loss_adds_the_mean_squared_max_logit(reference_dir, cases):
    model = BaichuanForCausalLM.from_pretrained(str(reference_dir)).eval()
    batch = dict(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=cases["labels"])
    with torch.no_grad():
        plain = model(**batch)
        model.config.z_loss_weight = 0.5
        with_z = model(**batch)
        sparse = model(**batch, logits_at_labels_only=True)
    every_position = plain.logits[:, :-1].reshape(-1, 512).max(-1).values.pow(2).mean()
    torch.testing.assert_close(with_z.loss, plain.loss + 0.5 * every_position, **TOL)
    label_positions = sparse.logits.max(-1).values.pow(2).mean()
    torch.testing.assert_close(sparse.loss, plain.loss + 0.5 * label_positions, **TOL)


