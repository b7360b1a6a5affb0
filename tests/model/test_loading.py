"""Loading a model folder (tuning/model/baichuan.py): every layout loads with weights_only, progress is one note, and
a folder that does not hold exactly our model is a one-line error before anything is built, on every entry point."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import ONE_PROCESS_FLAGS, write_sharded_bin
from transformers import GPT2Config, LlamaConfig

import predict
import run_test
from tuning.model.baichuan import BaichuanForCausalLM, load_model, load_tokenizer
from tuning.runtime.errors import DataError
from tuning.train import merge_lora, run

REVIEW = "送餐很快，饭菜还是热的"


@pytest.fixture(scope="module")
def data_dir(make_review_data):
    return make_review_data(train_per_label=40, eval_per_label=8)


@pytest.fixture(scope="module")
def tiny_base(data_dir, make_tiny_base):
    return make_tiny_base(data_dir, vocab_size=2000)


def _copy(tiny_base, folder, change_weights=None):
    """A copy of the tiny base model; `change_weights(weights)` edits its model.safetensors."""
    shutil.copytree(tiny_base, folder)
    if change_weights:
        weights = load_file(folder / "model.safetensors")
        change_weights(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits


def _drop_layer_1_and_head(weights):
    for name in [name for name in weights if name.startswith("model.layers.1.") or name == "lm_head.weight"]:
        del weights[name]


def _add_a_tensor(weights):
    weights["model.layers.0.mlp.extra.weight"] = torch.ones(3)


def _reshape_the_norm(weights):
    weights["model.norm.weight"] = torch.ones(64)


@pytest.mark.parametrize("change, problem", [
    (_drop_layer_1_and_head, "8 missing (lm_head.weight, model.layers.1.input_layernorm.weight, "
                             "model.layers.1.mlp.down_proj.weight, ...)"),
    (_add_a_tensor, "1 unexpected (model.layers.0.mlp.extra.weight)"),
    (_reshape_the_norm, "1 of another shape (model.norm.weight [64] (the model's [128]))"),
])
def test_weights_that_do_not_fit_the_model_are_named(tiny_base, tmp_path, change, problem):
    folder = _copy(tiny_base, tmp_path / "model", change)
    with pytest.raises(DataError) as error:
        load_model(folder)
    assert str(error.value) == f"model folder {folder}: the weights do not fit config.json's model: {problem}"


def test_rotary_buffers_of_old_checkpoints_are_the_one_exception(tiny_base, tmp_path):
    """The model derives them itself (`_keys_to_ignore_on_load_unexpected`); any other extra tensor is refused."""
    def add_buffers(weights):
        weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)
        weights["model.layers.1.self_attn.rotary_emb.cos_cached"] = torch.ones(1, 1, 8, 32)

    folder = _copy(tiny_base, tmp_path / "old", add_buffers)
    torch.testing.assert_close(_logits(load_model(folder)), _logits(load_model(tiny_base)), rtol=0, atol=0)
    other = _copy(tiny_base, tmp_path / "other", lambda weights: weights.update(
        {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16), "model.layers.0.self_attn.bias": torch.ones(3)}))
    with pytest.raises(DataError, match=r"1 unexpected \(model.layers.0.self_attn.bias\)$"):
        load_model(other)


def _entry_points(tiny_base, data_dir, folder, output):
    """Each command that loads a model, given `folder` as the model: exit code 2 is what they return on DataError."""
    eval_data = str(data_dir / "eval.jsonl")
    adapter = output.parent / "adapter"  # files only: merging reads the adapter after the base
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    return {
        "predict": lambda: predict.main(["--model", str(folder), REVIEW]),
        "run_test": lambda: run_test.main(["--base_model", str(folder), "--tuned_model", str(tiny_base),
                                           "--eval_data", eval_data, "--output_dir", str(output / "eval")]),
        "train": lambda: run.main([*ONE_PROCESS_FLAGS, "--model_name_or_path", str(folder), "--train_data",
                                   str(data_dir / "train.jsonl"), "--eval_data", eval_data, "--output_dir",
                                   str(output / "run"), "--max_steps", "1", "--report_to", "none"]),
        "lora_merge": lambda: merge_lora.main(["--base_model", str(folder), "--adapter", str(adapter),
                                               "--output_dir", str(output / "merged")]),
    }


@pytest.mark.parametrize("entry", ["predict", "run_test", "train", "lora_merge"])
def test_every_entry_point_refuses_missing_tensors(tiny_base, data_dir, tmp_path, capsys, entry):
    folder = _copy(tiny_base, tmp_path / "model", _drop_layer_1_and_head)
    command = _entry_points(tiny_base, data_dir, folder, tmp_path / "out")[entry]
    capsys.readouterr()
    assert command() == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: model folder {folder}: the weights do not fit config.json's model: 8 missing "
                      "(lm_head.weight, model.layers.1.input_layernorm.weight, model.layers.1.mlp.down_proj.weight, ...)"]
    assert "Traceback" not in captured.err and (entry != "predict" or captured.out == "")  # no answers
    assert not any((tmp_path / "out").rglob("*.safetensors"))  # no model written


def _config_of(kind, tiny_base):
    if kind == "gpt2":
        return GPT2Config(architectures=["GPT2LMHeadModel"]).to_dict()
    if kind == "llama":
        return LlamaConfig(architectures=["LlamaForCausalLM"]).to_dict()
    config = json.loads((tiny_base / "config.json").read_text())
    return config | {"architectures": ["BaiChuanForCausalLM"]}  # Baichuan-7B (v1): no NormHead, another class


@pytest.mark.parametrize("kind, described", [
    ("gpt2", "model_type 'gpt2', architectures ['GPT2LMHeadModel']"),
    ("llama", "model_type 'llama', architectures ['LlamaForCausalLM']"),
    ("baichuan-1", "model_type 'baichuan', architectures ['BaiChuanForCausalLM']"),
])
def test_another_architecture_is_refused_before_anything_is_built(tiny_base, tmp_path, capsys, monkeypatch, kind,
                                                                  described):
    folder = _copy(tiny_base, tmp_path / kind)
    (folder / "config.json").write_text(json.dumps(_config_of(kind, tiny_base)))
    built = []
    monkeypatch.setattr(BaichuanForCausalLM, "__init__", lambda *args, **kwargs: built.append(1))
    capsys.readouterr()
    assert predict.main(["--model", str(folder), REVIEW]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: model folder {folder} holds another architecture (config.json: {described}); expected Baichuan2-7B "
        "(model_type 'baichuan', BaichuanForCausalLM)"]
    assert built == []


def test_a_tokenizer_of_another_model_is_refused(tiny_base, baichuan_tokenizer_model, tmp_path, capsys):
    folder = _copy(tiny_base, tmp_path / "model")
    shutil.copy(baichuan_tokenizer_model, folder / "tokenizer.model")
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
    capsys.readouterr()
    assert predict.main(["--model", str(folder), REVIEW]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {folder / 'tokenizer.model'} has 125,696 tokens but config.json's vocab_size is {vocab_size:,}: "
        "the tokenizer belongs to another model"]
    (folder / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(DataError, match=rf"^{folder / 'tokenizer.model'}: not a SentencePiece model \(.+\)$"):
        load_tokenizer(folder)


def test_a_truncated_model_file_is_one_line_naming_it(tiny_base, tmp_path, capsys):
    folder = _copy(tiny_base, tmp_path / "model")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert predict.main(["--model", str(folder), REVIEW]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {folder / 'model.safetensors'}: damaged or truncated weight file (incomplete metadata, file not "
        "fully covered)"]


class _RunsCode:
    """A pickle payload that would create a marker file if unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["safetensors", "sharded-safetensors", "bin", "sharded-bin"])
def test_every_layout_loads_the_same_model_and_pickles_stay_weights_only(tiny_base, tmp_path, capfd, layout):
    model = load_model(tiny_base)
    folder = tmp_path / layout
    if layout.endswith("safetensors"):
        model.save_pretrained(folder, max_shard_size="1MB" if layout.startswith("sharded") else "50GB")
    else:
        folder.mkdir()
        model.config.save_pretrained(folder)
        if layout == "bin":
            torch.save(dict(model.state_dict()), folder / "pytorch_model.bin")
        else:
            write_sharded_bin(model.state_dict(), folder, shards=3)
    shutil.copy(tiny_base / "tokenizer.model", folder)
    files = sorted(path.name for path in folder.glob("*.safetensors")) + sorted(path.name for path in folder.glob("*.bin"))
    assert len(files) > 1 if layout.startswith("sharded") else len(files) == 1
    capfd.readouterr()
    torch.testing.assert_close(_logits(load_model(folder)), _logits(model), rtol=0, atol=0)
    size_mb = model.num_parameters() * 4 / 1e6
    assert capfd.readouterr().err.splitlines() == [  # one line, no progress bar per file
        f"note: loading {folder}: {len(files)} weight file{'s' if len(files) > 1 else ''}, {size_mb:.1f} MB in float32"]
    if layout.endswith("bin"):
        marker = tmp_path / "pwned"
        with open(folder / files[-1], "wb") as handle:
            pickle.dump({"model.norm.weight": _RunsCode(str(marker))}, handle)
        with pytest.raises(DataError, match=rf"^{folder / files[-1]}: refused to unpickle weights that hold more"):
            load_model(folder)
        assert not marker.exists()


def test_other_processes_print_no_loading_note(tiny_base, capfd, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    capfd.readouterr()
    load_model(tiny_base)
    assert capfd.readouterr().err == ""
