"""A model folder's weight files, the tensors they declare and their size, read without loading the weights
(tuning/model/files.py)."""

import json
import shutil

import pytest
import torch
from tiny_models import tiny_baichuan, write_sharded_bin

from tuning.model.files import checkpoint_shapes, missing_model_files, tensor_shapes, weight_files, weights_bytes
from tuning.runtime.errors import DataError


@pytest.fixture(scope="module")
def model():
    return tiny_baichuan(seed=3)


def _layouts(model, root) -> dict:
    """The same weights in each layout from_pretrained reads: one or several safetensors files, one or several .bin."""
    folders = {name: root / name for name in ("safetensors", "sharded-safetensors", "bin", "sharded-bin")}
    model.save_pretrained(folders["safetensors"])
    model.save_pretrained(folders["sharded-safetensors"], max_shard_size="100KB")
    for name in ("bin", "sharded-bin"):
        folders[name].mkdir()
        model.config.save_pretrained(folders[name])
    torch.save(dict(model.state_dict()), folders["bin"] / "pytorch_model.bin")
    write_sharded_bin(model.state_dict(), folders["sharded-bin"], shards=3)
    return folders


def test_each_layout_declares_the_models_tensors_and_size(model, tmp_path):
    folders = _layouts(model, tmp_path)
    assert len(weight_files(folders["sharded-safetensors"])) > 1
    assert [path.name for path in weight_files(folders["sharded-bin"])] == [
        f"pytorch_model-0000{index}-of-00003.bin" for index in (1, 2, 3)]
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    for folder in folders.values():
        assert missing_model_files(folder) == []
        assert checkpoint_shapes(folder) == expected
        assert weights_bytes(folder, torch.float32) == model.num_parameters() * 4
        assert weights_bytes(folder, torch.bfloat16) == model.num_parameters() * 2


def test_the_stored_dtype_does_not_change_the_size(model, tmp_path):
    model_bf16 = tiny_baichuan(seed=3).to(torch.bfloat16)
    write_sharded_bin(model_bf16.state_dict(), tmp_path)
    model.config.save_pretrained(tmp_path)
    assert weights_bytes(tmp_path, torch.float32) == model.num_parameters() * 4
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert weights_bytes(tmp_path, torch.bfloat16) == index["metadata"]["total_size"]


def test_the_reference_checkpoints_size_is_its_index_total(reference_dir, tmp_path):
    """The official layout's index states total_size in the stored dtype (float32 here)."""
    total_size = json.loads((reference_dir / "pytorch_model.bin.index.json").read_text())["metadata"]["total_size"]
    assert weights_bytes(reference_dir, torch.float32) == total_size  # from model.safetensors' header
    for name in ("config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
                 "pytorch_model-00002-of-00002.bin"):
        shutil.copy(reference_dir / name, tmp_path)
    assert weights_bytes(tmp_path, torch.float32) == total_size  # from the .bin shards
    assert weights_bytes(tmp_path, torch.float16) == total_size // 2


def test_safetensors_come_first_as_from_pretrained_takes_them(reference_dir):
    assert [path.name for path in weight_files(reference_dir)] == ["model.safetensors"]


@pytest.mark.parametrize("name, cut", [("model.safetensors", 1000), ("model.safetensors", 50),
                                       ("pytorch_model-00002-of-00002.bin", 100)])
def test_a_truncated_weight_file_is_named(reference_dir, tmp_path, name, cut):
    data = (reference_dir / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) - cut])
    with pytest.raises(DataError, match=rf"^{tmp_path / name}: damaged or truncated weight file \(.+\)$"):
        tensor_shapes(tmp_path / name)


def test_an_index_that_names_files_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(DataError, match="weight_map names something other than a file in this folder"):
        weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(DataError, match="no weight_map naming the shard files"):
        weight_files(tmp_path)
