"""train.py in one process on the CPU: encoding, flags, run manifest, resume, reports, bad inputs.

The DeepSpeed launcher runs (2 processes, ZeRO-2/ZeRO-3, bf16, interrupt and resume) are in tests/scripts/test_ds_run.py.
"""

import errno
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from lock_holder import start_lock_holder
from tiny_models import ONE_PROCESS_FLAGS, expected_precision
from transformers import Trainer

from tuning.data.collate import PaddingCollator
from tuning.data.encode import answer_word, load_split
from tuning.data.prompt import IGNORE_INDEX, PromptFormat
from tuning.eval.scoring import label_log_probs
from tuning.model.baichuan import load_model, load_tokenizer
from tuning.run_layout import (
    CONFIG_NAME,
    FINAL_STAGING,
    MANIFEST_NAME,
    SUMMARY_NAME,
    checksum_problem,
    latest_complete_checkpoint,
    missing_deepspeed_files,
    write_checksums,
)
from tuning.runtime.devices import detect_device
from tuning.runtime.errors import DataError
from tuning.runtime.lock import LOCK_NAME
from tuning.train.recipe import parse_recipe
from tuning.train.run import build_trainer, main, run_identity, setup_training_arguments
from tuning.train.run_folder import check_output_dir, resolve_resume


@pytest.fixture(scope="module")
def data_dir(make_review_data):
    return make_review_data(train_per_label=60, eval_per_label=16)  # small: one-process runs of a few steps


@pytest.fixture(scope="module")
def tiny_base(data_dir, make_tiny_base):
    return make_tiny_base(data_dir, vocab_size=2000)


def _flags(tiny_base, data_dir, output_dir, *extra):
    """The 7B recipe in one plain process: no DeepSpeed, the batch as given, no gradient checkpointing."""
    return [
        *ONE_PROCESS_FLAGS, "--per_device_train_batch_size", "8", "--model_name_or_path", str(tiny_base), "--train_data", str(data_dir / "train.jsonl"),
        "--eval_data", str(data_dir / "eval.jsonl"), "--output_dir", str(output_dir), "--report_to", "none",
        "--disable_tqdm", "true", *extra,
    ]


def test_examples_are_encoded_like_the_original(tiny_base, data_dir):
    tokenizer = load_tokenizer(tiny_base)
    prompt_format = PromptFormat.from_config(load_model(tiny_base).config)
    split = load_split(data_dir / "train.jsonl", tokenizer, prompt_format, max_length=256, limit=10)
    record = json.loads((data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[1])
    example = split.examples[1]
    user, assistant = prompt_format.user_token_id, prompt_format.assistant_token_id
    prompt = [user, *tokenizer.encode(f"{record['review']} -> "), assistant]
    target = [*tokenizer.encode(record["label"]), prompt_format.eos_token_id]
    assert example.input_ids == prompt + target
    assert example.labels == [IGNORE_INDEX] * len(prompt) + target
    assert split.prompts()[1] == prompt
    assert split.answers[:2] == ["积极", "消极"] and len(split.examples) == 10 and split.truncated == 0


def test_a_long_review_is_cut_in_its_prompt_never_dropped(tiny_base, tmp_path):
    path = tmp_path / "long.jsonl"
    lines = [{"review": "好吃" * 300, "label": "积极"}, {"review": "太慢了", "label": "消极"}]
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    tokenizer = load_tokenizer(tiny_base)
    prompt_format = PromptFormat.from_config(load_model(tiny_base).config)
    split = load_split(path, tokenizer, prompt_format, max_length=32)
    assert len(split.examples) == 2 and split.truncated == 1
    long = split.examples[0]
    assert len(long.input_ids) == 32
    assert long.input_ids[-2:] == [*tokenizer.encode("积极"), prompt_format.eos_token_id]
    assert long.input_ids[-3] == prompt_format.assistant_token_id  # the template's tail and the answer survive


def test_label_words_flag_maps_make_data_labels_in_order():
    assert answer_word("积极", ("good", "bad")) == "good"
    assert answer_word("消极", ("good", "bad")) == "bad"
    assert answer_word("bad", ("good", "bad")) == "bad"
    assert answer_word("中性", ("积极", "消极")) is None
    assert answer_word("积极", ("a", "b", "c")) is None


def test_a_bad_record_is_named_by_file_and_line(tiny_base, tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = ['{"review": "好吃", "label": "积极"}', "", '{"review": "还行", "label": "好"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prompt_format = PromptFormat(3, 4, 2)
    with pytest.raises(DataError, match=r"bad.jsonl:3: label '好' is not one of 积极, 消极"):
        load_split(path, load_tokenizer(tiny_base), prompt_format, max_length=64)


def _recipe(flags):
    return parse_recipe(flags)


def _trainer(tiny_base, data_dir, tmp_path, *extra):
    return build_trainer(_recipe(_flags(tiny_base, data_dir, tmp_path, *extra)), tiny_base, detect_device())


def test_the_original_flags_are_accepted(tiny_base, data_dir, tmp_path, capsys):
    recipe = _recipe(_flags(
        tiny_base, data_dir, tmp_path, "--max_seq_length", "512", "--warmup_ratio", "0.03", "--gradient_checkpointing",
        "--bf16", "--tf32", "true", "--lr_scheduler_type", "cosine", "--weight_decay", "0",
    ))
    assert recipe.data.model_max_length == 512 and recipe.data.padding == "dynamic"
    args = setup_training_arguments(recipe, detect_device(), train_samples=100)
    assert args.warmup_steps == 0.03 and args.activation_checkpointing is True
    precision = expected_precision()
    assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16")
    if detect_device().kind != "cuda":
        assert args.tf32 is None  # tf32 is for NVIDIA GPUs only
    if precision == "fp32":
        assert "training in fp32" in capsys.readouterr().err
    assert args.resume_from_checkpoint == "auto" and args.label_names == ["labels"] and args.prediction_loss_only
    assert (args.eval_strategy, args.save_strategy) == ("epoch", "epoch")
    with pytest.raises(DataError, match="--warmup_ratio"):
        _recipe(_flags(tiny_base, data_dir, tmp_path, "--warmup_ratio", "0.03", "--warmup_steps", "5"))


def test_help_is_written_for_a_new_user(capsys):
    with pytest.raises(SystemExit) as done:
        _recipe(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "to answer 积极 or 消极 after a food-delivery review" in text
    assert "--max_seq_length MODEL_MAX_LENGTH" in text and "--padding {dynamic,max_length}" in text


def test_output_dir_of_another_run_is_refused(tiny_base, data_dir, tmp_path):
    recipe = _recipe(_flags(tiny_base, data_dir, tmp_path / "out"))
    identity = run_identity(tiny_base, recipe.data, recipe.lora)
    output_dir = tmp_path / "out"
    check_output_dir(output_dir, identity)  # absent: fine
    output_dir.mkdir()
    (output_dir / "train_20260101-000000.log").write_text("launcher log", encoding="utf-8")
    check_output_dir(output_dir, identity)  # only the launcher's log: fine
    (output_dir / MANIFEST_NAME).write_text(json.dumps({**identity, "train_data_sha256": "0" * 64}), encoding="utf-8")
    with pytest.raises(DataError, match=r"holds another run \(train_data_sha256"):
        check_output_dir(output_dir, identity)
    (output_dir / MANIFEST_NAME).unlink()
    (output_dir / "model.safetensors").write_bytes(b"x")
    with pytest.raises(DataError, match=f"holds files but no {MANIFEST_NAME}"):
        check_output_dir(output_dir, identity)


def _checkpoint(folder: Path, deepspeed_states=True, finished=True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"x")
    if deepspeed_states:
        (folder / "global_step1").mkdir()
        (folder / "global_step1" / "mp_rank_00_model_states.pt").write_bytes(b"x")
        (folder / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
        (folder / "latest").write_text("global_step1", encoding="utf-8")
    if finished:
        (folder / "trainer_state.json").write_text('{"global_step": 1}', encoding="utf-8")
        write_checksums(folder)
    return folder


def test_deepspeed_checkpoint_completeness(tmp_path):
    complete = _checkpoint(tmp_path / "checkpoint-4")
    assert missing_deepspeed_files(complete) == []
    (complete / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert missing_deepspeed_files(complete) == ["global_step1/*optim_states.pt"]
    (complete / "latest").unlink()
    assert missing_deepspeed_files(complete) == ["latest"]  # states written, `latest` not yet
    assert missing_deepspeed_files(_checkpoint(tmp_path / "plain", deepspeed_states=False)) == []


def test_resume_takes_the_latest_complete_checkpoint_and_deletes_nothing(tmp_path):
    _checkpoint(tmp_path / "checkpoint-10")
    _checkpoint(tmp_path / "checkpoint-20", finished=False)  # interrupted while saving
    broken = _checkpoint(tmp_path / "checkpoint-30")
    (broken / "latest").write_text("global_step30", encoding="utf-8")  # names a folder that was never written
    assert resolve_resume("auto", tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert resolve_resume("auto", tmp_path / "fresh") is None
    with pytest.raises(DataError, match="checkpoint-20: not a checkpoint to resume from: no trainer_state.json"):
        resolve_resume(str(tmp_path / "checkpoint-20"), tmp_path)


def test_label_only_logits_give_the_same_loss_and_tokens_are_counted(tiny_base, data_dir, tmp_path):
    trainer, train_split, _ = _trainer(tiny_base, data_dir, tmp_path, "--max_train_samples", "8")
    assert trainer.logits_at_labels_only and trainer.args.train_sampling_strategy == "group_by_length"
    batch = PaddingCollator(0)([trainer.train_dataset[index] for index in range(8)])
    model = trainer.model.train()
    label_only = trainer.compute_loss(model, batch)
    trainer.logits_at_labels_only = False
    full = trainer.compute_loss(model, batch)
    torch.testing.assert_close(label_only, full)
    real, total = trainer.token_totals()
    assert real == 2 * batch["attention_mask"].sum().item() and total == 2 * batch["attention_mask"].numel()


def test_label_accuracy_is_label_scoring_of_the_eval_prompts(tiny_base, data_dir, tmp_path):
    trainer, _, eval_split = _trainer(tiny_base, data_dir, tmp_path, "--per_device_eval_batch_size", "5")
    accuracy = trainer.label_accuracy
    scores = label_log_probs(trainer.model, eval_split.prompts(), accuracy.candidates, 0, batch_size=32)
    predicted = [accuracy.label_words[index] for index in scores.argmax(-1).tolist()]
    expected = sum(p == g for p, g in zip(predicted, eval_split.answers)) / len(predicted)
    assert accuracy(trainer.model)["accuracy"] == pytest.approx(expected)


def test_the_deepspeed_gradient_norm_is_read_on_the_host_only_when_logged(tiny_base, data_dir, tmp_path, monkeypatch):
    trainer, _, _ = _trainer(tiny_base, data_dir, tmp_path)
    norm = torch.tensor(2.5)
    assert trainer._get_grad_norm(trainer.model, grad_norm=norm) is norm  # plain Trainer: already no .item()
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    assert Trainer._get_grad_norm(trainer, trainer.model, grad_norm=norm) == 2.5  # transformers' own: a float
    assert trainer._get_grad_norm(trainer.model, grad_norm=norm) is norm  # ours: a tensor, which the log reads


def test_training_writes_model_reports_and_rerunning_resumes(tiny_base, data_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    flags = _flags(tiny_base, data_dir, output_dir, "--padding", "max_length", "--model_max_length", "96",
                   "--max_steps", "3", "--per_device_train_batch_size", "4", "--save_strategy", "steps",
                   "--save_steps", "2", "--learning_rate", "1e-3", "--report_to", "tensorboard",
                   "--logging_steps", "1")
    assert main(flags) == 0
    precision = expected_precision()
    summary = json.loads((output_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["global_step"] == 3 and summary["precision"] == precision and summary["processes"] == 1
    parameters = load_model(output_dir).num_parameters()
    assert summary["trainable_parameters"] == summary["total_parameters"] == parameters  # full fine-tuning
    assert summary["padding"] == "max_length" and summary["logits_at_labels_only"] is False
    assert summary["padding_share"] > 0.5  # short reviews padded to 96 tokens, as the original did
    assert 0 <= summary["eval_accuracy"] <= 1 and summary["eval_loss"] > 0 and summary["tokens_per_second"] > 0
    for name in ("training_curves.png", "trainer_state.json", "tokenizer.model", MANIFEST_NAME, CONFIG_NAME):
        assert (output_dir / name).is_file(), name
    assert list(output_dir.glob("runs/*/events.out.tfevents.*"))
    assert load_model(output_dir).config.use_cache is True
    assert latest_complete_checkpoint(output_dir).name == "checkpoint-3"
    manifest = json.loads((output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert (manifest["world_size"], manifest["zero_stage"], manifest["precision"]) == (1, None, precision)

    capsys.readouterr()
    assert main(flags) == 0  # the same command again: already done, nothing is trained or rewritten
    assert "already holds this run's final model (checkpoint-3); nothing to train" in capsys.readouterr().err
    assert json.loads((output_dir / SUMMARY_NAME).read_text(encoding="utf-8")) == summary

    # as if the process had died right after saving checkpoint-2: the same command continues from there
    shutil.rmtree(output_dir / "checkpoint-3")
    (output_dir / SUMMARY_NAME).unlink()
    assert main(flags) == 0
    assert f"resuming from {output_dir / 'checkpoint-2'}" in capsys.readouterr().err
    summary = json.loads((output_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["resumed_from"] == str(output_dir / "checkpoint-2") and summary["global_step"] == 3
    steps = [entry["step"] for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
             if "loss" in entry]
    assert steps == [1, 2, 3]  # the log of the first session is kept, step 3 trained once more

    # a finished run with no checkpoint left (e.g. --save_strategy no): the same command never trains over it
    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    weights = (output_dir / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(flags) == 0
    assert "already holds a finished run (train_summary.json) and no checkpoint" in capsys.readouterr().err
    assert (output_dir / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("change, message", [
    (("--model_name_or_path", "/nonexistent/model"), "model folder /nonexistent/model is missing or incomplete"),
    (("--train_data", "/nonexistent/train.jsonl"), "/nonexistent/train.jsonl: file not found"),
    (("--label_words", "积极"), "--label_words '积极': give two or more different, non-empty words"),
    (("--prompt_template", "no review here"), "--prompt_template: prompt template must contain '{review}' once"),
    (("--model_max_length", "4"), "--model_max_length 4: max length 2 leaves no room for the review"),
    (("--max_eval_samples", "0"), "--max_eval_samples 0: must be at least 1"),
])
def test_bad_inputs_are_one_line_errors(tiny_base, data_dir, tmp_path, capsys, change, message):
    assert main(_flags(tiny_base, data_dir, tmp_path / "out", *change)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_malformed_data_from_the_command_line(tiny_base, data_dir, tmp_path, repo_root):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"review": "好吃", "label": "积极"}\n{"review": "慢", "label"\n', encoding="utf-8")
    flags = _flags(tiny_base, data_dir, tmp_path / "out")
    flags[flags.index("--train_data") + 1] = str(bad)
    result = subprocess.run([sys.executable, "train.py", *flags], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bad}:2: not valid JSON (Expecting ':' delimiter)"]
    assert "Traceback" not in result.stderr


def test_a_resume_at_the_last_step_reports_no_speed(tiny_base, data_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    flags = _flags(tiny_base, data_dir, output_dir, "--eval_data", "", "--max_train_samples", "8",
                   "--model_max_length", "64", "--per_device_train_batch_size", "4", "--save_strategy", "epoch")
    assert main(flags) == 0
    assert json.loads((output_dir / SUMMARY_NAME).read_text(encoding="utf-8"))["samples_per_second"] > 0
    (output_dir / SUMMARY_NAME).unlink()  # as if killed after the last checkpoint: the resume trains no step
    assert main(flags) == 0
    summary = json.loads((output_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["global_step"] == 2 and summary["samples_per_second"] is None
    assert summary["tokens_per_second"] is None
    assert "no step trained in this launch" in capsys.readouterr().out


class _Planted:
    """A pickle that creates `marker` when it is loaded (as a pickle planted in a checkpoint could run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_resume_trusts_only_checkpoints_whose_files_match_their_record(tiny_base, data_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    flags = _flags(tiny_base, data_dir, output_dir, "--eval_data", "", "--model_max_length", "64", "--max_steps", "4",
                   "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2")
    assert main(flags) == 0
    assert not (output_dir / FINAL_STAGING).exists() and (output_dir / "tokenizer.model").is_file()
    assert not (output_dir / LOCK_NAME).exists()  # released at the end
    newest, previous = output_dir / "checkpoint-4", output_dir / "checkpoint-2"
    assert checksum_problem(newest) is None and checksum_problem(previous) is None

    weights = bytearray((newest / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # one byte of the newest checkpoint tampered with
    (newest / "model.safetensors").write_bytes(weights)
    capsys.readouterr()
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert (f"note: {newest} skipped: model.safetensors differs from the SHA-256 recorded at the save" in err
            and f"resuming from {previous}" in err), err
    assert checksum_problem(newest) is None  # saved again, with a new record

    marker = tmp_path / "unpickled"
    (newest / "optimizer.pt").write_bytes(pickle.dumps(_Planted(marker)))
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert f"{newest} skipped: optimizer.pt differs" in err and f"resuming from {previous}" in err
    assert not marker.exists()

    (newest / "optimizer.pt").write_bytes(pickle.dumps(_Planted(marker)))
    assert main([*flags, "--resume_from_checkpoint", str(newest)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: --resume_from_checkpoint {newest}: not a checkpoint to resume from: optimizer.pt "
                      "differs from the SHA-256 recorded at the save"]
    assert not marker.exists() and not (output_dir / LOCK_NAME).exists()  # released on an error too

    (newest / "trainer_state.json").write_bytes(b"")  # a 0-byte state: an incomplete checkpoint
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert f"{newest} skipped: trainer_state.json is damaged" in err and f"resuming from {previous}" in err


def test_a_second_run_into_a_folder_in_use_is_refused_before_the_model_loads(tiny_base, data_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    holder = start_lock_holder(output_dir / LOCK_NAME)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(_flags(tiny_base, data_dir, output_dir)) == 2
        assert sorted(path.name for path in output_dir.iterdir()) == [LOCK_NAME]  # the holder's; nothing written
    finally:
        holder.communicate("done\n", timeout=60)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: {output_dir} is in use by another training run (host {socket.gethostname()}, PID "
                      f"{holder.pid}, lock file {LOCK_NAME}); wait for it to finish or choose another output folder"]


def test_the_lock_its_launcher_took_passes_to_the_run_and_is_released_at_the_end(tiny_base, data_dir, tmp_path,
                                                                                   monkeypatch, repo_root):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    launcher = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        taken = subprocess.run([sys.executable, "-m", "tuning.runtime.lock", "take", str(output_dir), "--pid",
                                str(launcher.pid)], capture_output=True, text=True, check=True, cwd=repo_root,
                               env={**os.environ, "PYTHONPATH": str(repo_root)})
        monkeypatch.setenv("WAIMAI_LAUNCH_LOCK", taken.stdout.strip())
        assert main(_flags(tiny_base, data_dir, output_dir, "--max_steps", "1")) == 0
    finally:
        launcher.communicate(b"\n", timeout=60)
    assert (output_dir / SUMMARY_NAME).is_file() and not (output_dir / LOCK_NAME).exists()


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("basic_ios::clear: iostream error")], ids=["ENOSPC", "torch"])
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tiny_base, data_dir, tmp_path, capsys,
                                                                            monkeypatch, failure):
    output_dir = tmp_path / "run"
    real_save = Trainer._save

    def save(self, output_dir=None, state_dict=None):  # the disk fills up at the second checkpoint
        if str(output_dir).endswith("checkpoint-4"):
            raise failure
        real_save(self, output_dir, state_dict)

    monkeypatch.setattr(Trainer, "_save", save)
    flags = _flags(tiny_base, data_dir, output_dir, "--eval_data", "", "--model_max_length", "64", "--max_steps", "6",
                   "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2")
    assert main(flags) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: no space left on OUTPUT_DIR {re.escape(str(output_dir))} \(\d+ MB free\); kept "
        rf"{re.escape(str(output_dir / 'checkpoint-2'))} \(the same command continues from there once there is "
        r"space\)", errors[0]), err
    assert "Traceback" not in err and checksum_problem(output_dir / "checkpoint-2") is None
    assert not (output_dir / LOCK_NAME).exists()
