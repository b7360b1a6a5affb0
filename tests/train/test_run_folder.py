import json

import pytest

from tuning.model.files import missing_model_files
from tuning.run_layout import MANIFEST_NAME, SUMMARY_NAME, write_checksums
from tuning.runtime.errors import DataError
from tuning.train.run_folder import check_shared_output_dir, plan_resume, run_shape


def _model_folder(path, with_state=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"x")
    if with_state:
        (path / "trainer_state.json").write_text('{"global_step": 1}', encoding="utf-8")
    return path


def test_missing_model_files_names_missing_shards(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")
    (tmp_path / "pytorch_model-00001-of-00002.bin").write_bytes(b"x")
    assert missing_model_files(tmp_path) == ["pytorch_model-00002-of-00002.bin"]
    assert missing_model_files(tmp_path / "nope") == [f"{tmp_path / 'nope'} (no such folder)"]


def test_a_corrupt_index_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "pytorch_model.bin.index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="pytorch_model.bin.index.json: not valid JSON"):
        missing_model_files(tmp_path)


def _run_folder(tmp_path, shape):
    """A run folder of 16 ZeRO-2 bf16 processes with its checkpoint-10 (4 planned steps more)."""
    output_dir = tmp_path / "run"
    _model_folder(output_dir / "checkpoint-10")
    (output_dir / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10, "epoch": 0.5}')
    write_checksums(output_dir / "checkpoint-10")
    (output_dir / MANIFEST_NAME).write_text(json.dumps({"model": "m"} | shape), encoding="utf-8")
    return output_dir


def test_resuming_with_another_shape_says_what_to_do(tmp_path):
    output_dir = _run_folder(tmp_path, run_shape(16, 2, "bf16"))
    plan = plan_resume(output_dir, {"model": "m"}, "auto", run_shape(16, 2, "bf16"), max_steps=14, epochs=1)
    assert plan.checkpoint == str(output_dir / "checkpoint-10") and plan.finished is None
    with pytest.raises(DataError) as error:
        plan_resume(output_dir, {"model": "m"}, "auto", run_shape(8, 3, "bf16"), max_steps=14, epochs=1)
    assert str(error.value) == (
        f"{output_dir / 'checkpoint-10'} was saved with world_size 16, zero_stage 2, this launch has world_size 8, "
        "zero_stage 3: launch it as it was saved, start a new OUTPUT_DIR, or convert the checkpoint to DeepSpeed's "
        'universal format (python -m deepspeed.checkpoint.ds_to_universal) and resume with "checkpoint": '
        '{"load_universal": true}'
    )


def test_a_finished_run_needs_no_shape_check(tmp_path):
    output_dir = _run_folder(tmp_path, run_shape(16, 2, "bf16"))
    (output_dir / SUMMARY_NAME).write_text('{"global_step": 10}', encoding="utf-8")
    plan = plan_resume(output_dir, {"model": "m"}, "auto", run_shape(8, 2, "fp16"), max_steps=10, epochs=1)
    assert plan.finished.endswith("nothing to train")


def test_the_shared_folder_check_leaves_nothing_behind(tmp_path):
    check_shared_output_dir(tmp_path / "new")  # one process: rank 0 sees its own file
    assert list((tmp_path / "new").iterdir()) == []
