"""LoRA (tuning/train/lora.py) through train.py in one process on the CPU: only the adapter trains, in fp32 over the
frozen base; the merged model gives the adapter model's logits and loads with our code and as remote code; a LoRA
run resumes from its checkpoints; wrong settings are one-line errors.

The launcher run (`USE_LORA=true bash ds_run_bf16.sh`: 2 processes, ZeRO-2, then run_test.sh) is in tests/scripts/test_ds_run.py.
"""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from remote_code import assert_works_as_remote_code
from safetensors.torch import load_file
from tiny_models import ONE_PROCESS_FLAGS
from torch import nn

from tuning.model.baichuan import BaichuanForCausalLM, load_model, load_tokenizer, tiny_config
from tuning.run_layout import ADAPTER_DIR, MANIFEST_NAME, SUMMARY_NAME, latest_complete_checkpoint, tuned_model_in
from tuning.runtime.devices import detect_device
from tuning.runtime.errors import DataError
from tuning.train.flags import LORA_LAYERS, LoraArguments
from tuning.train.lora import add_lora, merge_adapter, parameter_counts
from tuning.train.merge_lora import main as merge_main
from tuning.train.recipe import parse_recipe
from tuning.train.run import build_trainer, main

REVIEWS = ["送餐很快，饭菜还是热的，好评", "等了一个半小时，汤都洒了", "一般"]


@pytest.fixture(scope="module")
def data_dir(make_review_data):
    return make_review_data(train_per_label=60, eval_per_label=16)


@pytest.fixture(scope="module")
def tiny_base(data_dir, make_tiny_base):
    return make_tiny_base(data_dir, vocab_size=2000)


def _flags(tiny_base, data_dir, output_dir, *extra):
    """`--use_lora true` without a recipe file (so the 7B LoRA recipe) in one plain process, at a rate for 4 steps."""
    return [
        *ONE_PROCESS_FLAGS, "--use_lora", "true", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
        "--model_name_or_path", str(tiny_base), "--train_data", str(data_dir / "train.jsonl"),
        "--eval_data", str(data_dir / "eval.jsonl"), "--output_dir", str(output_dir), "--report_to", "none",
        "--disable_tqdm", "true", *extra,
    ]


@pytest.fixture(scope="module")
def lora_run(tiny_base, data_dir, tmp_path_factory) -> dict:
    """A finished LoRA run of 4 steps with checkpoints at steps 2 and 4."""
    output_dir = tmp_path_factory.mktemp("lora") / "run"
    flags = _flags(tiny_base, data_dir, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                   "--logging_steps", "1")
    assert main(flags) == 0
    return {"dir": output_dir, "flags": flags}


def _batch(model_dir) -> dict:
    tokenizer = load_tokenizer(model_dir)
    ids = [tokenizer.encode(review) for review in REVIEWS]
    width = max(map(len, ids))
    return {
        "input_ids": torch.tensor([[0] * (width - len(row)) + row for row in ids]),
        "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids]),
    }


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_the_lora_layers_are_the_models_linear_layers():
    model = BaichuanForCausalLM(tiny_config(100, user_token_id=3, assistant_token_id=4))
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if type(module) is nn.Linear}
    assert linear == set(LORA_LAYERS)  # every one but lm_head, a NormHead


def test_the_adapter_is_fp32_and_the_only_trainable_part_of_a_bf16_model():
    model = BaichuanForCausalLM(tiny_config(100, user_token_id=3, assistant_token_id=4)).to(torch.bfloat16)
    base_count = model.num_parameters()
    lora = add_lora(model, LoraArguments(use_lora=True, lora_rank=8, lora_dropout=0.05), gradient_checkpointing=False)
    trainable = {name: p for name, p in lora.named_parameters() if p.requires_grad}
    frozen = {name: p for name, p in lora.named_parameters() if not p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    # rank 8 on each layer's W_pack (128 -> 384), o_proj (128 -> 128) and gate/up/down (128 <-> 344), 2 layers
    assert parameter_counts(lora) == (2 * 8 * (512 + 256 + 3 * 472), base_count + 2 * 8 * (512 + 256 + 3 * 472))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lora(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    assert all(p.grad is None for p in frozen.values())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())


def test_training_changes_only_the_adapter(tiny_base, data_dir, tmp_path):
    """Gradient checkpointing with reentrant recomputation: only inputs that require grad carry gradients into the
    checkpointed layers, so every adapter changing means the frozen embeddings' output was made to require them."""
    flags = _flags(tiny_base, data_dir, tmp_path, "--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "no",
                   "--gradient_checkpointing", "true", "--activation_checkpointing_kwargs", '{"use_reentrant": true}')
    trainer, _, _ = build_trainer(parse_recipe(flags), tiny_base, detect_device())
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 3 and trainer.model.base_model.model.model.gradient_checkpointing
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[name])}
    adapter = {name for name in before if ".lora_A." in name or ".lora_B." in name}
    assert changed == adapter and len(adapter) == 2 * len(LORA_LAYERS) * 2  # A and B of 5 layers in 2 blocks


def test_the_run_writes_the_merged_model_the_adapter_and_the_counts(lora_run, tiny_base):
    run = lora_run["dir"]
    summary = json.loads((run / SUMMARY_NAME).read_text(encoding="utf-8"))
    base_count = load_model(tiny_base).num_parameters()
    assert summary["use_lora"] is True and summary["global_step"] == 4
    assert summary["total_parameters"] == base_count + summary["trainable_parameters"]
    assert 0 < summary["trainable_parameters"] < base_count / 10
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # each checkpoint holds the adapter, not the model
        names = {path.name for path in (run / checkpoint).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "optimizer.pt"} <= names
        assert "model.safetensors" not in names
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / ADAPTER_DIR).iterdir()}
    # the merged model in the official layout, and nothing that would make transformers load it as an adapter
    names = {path.name for path in run.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_baichuan.py", "configuration_baichuan.py",
            "tokenization_baichuan.py", "tokenizer.model", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names and not [name for name in names if name.startswith(".")]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BaichuanForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_baichuan.BaichuanForCausalLM"
    run_config = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    assert run_config["lora"]["use_lora"] is True and run_config["lora"]["lora_rank"] == 8
    assert run_config["recipe"].endswith("configs/baichuan2_7b_lora.yaml")  # --use_lora true without a recipe file
    assert tuned_model_in(run) == run


def test_the_merged_model_gives_the_adapter_models_logits(lora_run, tiny_base):
    adapter = lora_run["dir"] / ADAPTER_DIR
    batch = _batch(tiny_base)
    with_adapter = _logits(PeftModel.from_pretrained(load_model(tiny_base), str(adapter)), batch)
    merged = _logits(merge_adapter(tiny_base, adapter), batch)
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(load_model(lora_run["dir"]), batch), merged, rtol=0, atol=0)  # what was saved
    assert (with_adapter - _logits(load_model(tiny_base), batch)).abs().max() > 1e-2  # the adapter learned something


def test_the_merged_folder_loads_as_remote_code(lora_run, tmp_path):
    """transformers' Auto classes with trust_remote_code, in a process that never imported our code."""
    run = lora_run["dir"]
    batch = _batch(run)
    text_ids = load_tokenizer(run).encode(REVIEWS[0])
    assert_works_as_remote_code(run, batch, _logits(load_model(run), batch), tmp_path, REVIEWS[0], text_ids)


def test_a_lora_run_resumes_from_its_latest_checkpoint(lora_run, tmp_path, capsys):
    """As if the run had died after saving checkpoint-2: the same command continues it to the same adapter."""
    run, resumed = lora_run["dir"], tmp_path / "run"
    resumed.mkdir()
    shutil.copy(run / MANIFEST_NAME, resumed)
    shutil.copytree(run / "checkpoint-2", resumed / "checkpoint-2")
    flags = lora_run["flags"]
    flags = [*flags[: flags.index("--output_dir") + 1], str(resumed), *flags[flags.index("--output_dir") + 2:]]
    capsys.readouterr()
    assert main(flags) == 0
    assert f"resuming from {resumed / 'checkpoint-2'}" in capsys.readouterr().err
    summary = json.loads((resumed / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["resumed_from"] == str(resumed / "checkpoint-2") and summary["global_step"] == 4
    state = json.loads((resumed / "trainer_state.json").read_text(encoding="utf-8"))
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    # checkpoint-2's adapter and optimizer states were restored: steps 3 and 4 end where the uninterrupted run did
    final, uninterrupted = (load_file(folder / ADAPTER_DIR / "adapter_model.safetensors") for folder in (resumed, run))
    started = load_file(run / "checkpoint-2" / "adapter_model.safetensors")
    assert final.keys() == uninterrupted.keys() == started.keys()
    for name in final:
        torch.testing.assert_close(final[name], uninterrupted[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(final[name], started[name]) for name in final)


@pytest.mark.parametrize("change, message", [
    (("--use_lora", "false"), "holds another run (lora: LoRA rank 8, alpha 16, dropout 0.05, target "
                              "W_pack,o_proj,gate_proj,up_proj,down_proj there, full fine-tuning now)"),
    (("--lora_rank", "4"), "holds another run (lora: LoRA rank 8, alpha 16, dropout 0.05, target "
                           "W_pack,o_proj,gate_proj,up_proj,down_proj there, LoRA rank 4, alpha 8"),  # alpha: 2 x rank
])
def test_another_adapter_setting_never_continues_a_run(lora_run, tmp_path, capsys, change, message):
    run = tmp_path / "run"
    shutil.copytree(lora_run["dir"], run)
    summary = (run / SUMMARY_NAME).read_bytes()
    flags = lora_run["flags"]
    flags = [*flags[: flags.index("--output_dir") + 1], str(run), *flags[flags.index("--output_dir") + 2:], *change]
    capsys.readouterr()
    assert main(flags) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run} ") and message in errors[0]
    assert (run / SUMMARY_NAME).read_bytes() == summary


def test_an_adapter_only_checkpoint_is_complete_and_can_be_merged(lora_run, tiny_base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run["dir"] / "checkpoint-2", run / "checkpoint-2")
    assert latest_complete_checkpoint(run) == run / "checkpoint-2"
    with pytest.raises(DataError, match=r"no merged model yet, and checkpoint-2 holds only a LoRA adapter.*"
                                        r"python -m tuning.train.merge_lora --base_model BASE --adapter"):
        tuned_model_in(run)
    merged = tmp_path / "merged"
    assert merge_main(["--base_model", str(tiny_base), "--adapter", str(run / "checkpoint-2"),
                      "--output_dir", str(merged)]) == 0
    batch = _batch(tiny_base)
    with_adapter = PeftModel.from_pretrained(load_model(tiny_base), str(run / "checkpoint-2"))
    torch.testing.assert_close(_logits(load_model(merged), batch), _logits(with_adapter, batch), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert merge_main(["--base_model", str(tiny_base), "--adapter", str(run / "checkpoint-2"),
                      "--output_dir", str(merged)]) == 2
    assert capsys.readouterr().err == f"error: --output_dir {merged} already holds a model; choose another folder\n"
    (run / "checkpoint-2" / "adapter_model.safetensors").unlink()  # as if the save had stopped half-way
    assert latest_complete_checkpoint(run) is None
    assert merge_main(["--base_model", str(tiny_base), "--adapter", str(run / "checkpoint-2"),
                      "--output_dir", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err == (f"error: {run / 'checkpoint-2'}: not a LoRA adapter folder (no "
                                       "adapter_model.safetensors or adapter_model.bin)\n")


@pytest.mark.parametrize("change, message", [
    (("--lora_target", "q_proj,v_proj"), "--lora_target 'q_proj,v_proj': give different names of Baichuan2's linear "
                                         "layers (W_pack, o_proj, gate_proj, up_proj, down_proj)"),
    (("--lora_target", "lm_head"), "--lora_target 'lm_head': give different names"),
    (("--lora_target", "W_pack,W_pack"), "--lora_target 'W_pack,W_pack': give different names"),
    (("--lora_rank", "0"), "--lora_rank must be 1 or more and --lora_alpha more than 0"),
    (("--lora_dropout", "1"), "--lora_dropout 1.0: give a fraction in [0, 1)"),
])
def test_bad_lora_settings_are_one_line_errors(tiny_base, data_dir, tmp_path, capsys, change, message):
    assert main(_flags(tiny_base, data_dir, tmp_path / "out", *change)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not (tmp_path / "out").exists()
