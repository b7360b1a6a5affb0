import json

import pytest

from tuning.model.files import missing_model_files
from tuning.runtime.errors import DataError
from tuning.train.run_folder import latest_complete_checkpoint


def _model_folder(path, with_state=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"x")
    if with_state:
        (path / "trainer_state.json").write_text("{}", encoding="utf-8")
    return path


def test_latest_complete_checkpoint_skips_interrupted_save(tmp_path):
    _model_folder(tmp_path / "checkpoint-10")
    _model_folder(tmp_path / "checkpoint-9")
    _model_folder(tmp_path / "checkpoint-20", with_state=False)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert (tmp_path / "checkpoint-20").is_dir()


def test_no_checkpoint(tmp_path):
    assert latest_complete_checkpoint(tmp_path) is None
    assert latest_complete_checkpoint(tmp_path / "absent") is None


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
