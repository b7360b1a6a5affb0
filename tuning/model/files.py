"""What a model folder holds: config.json and its weight files (single or sharded, safetensors or .bin), the tensors
they declare and their size, read without loading the weights; and what a LoRA adapter folder holds."""

import math
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_json

if TYPE_CHECKING:  # torch loads only where tensors are read: the scripts' flags parse before it (run_layout)
    import torch

# transformers' from_pretrained takes the first of these that a folder holds (an index names its shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"  # peft's save_pretrained: the adapter's settings and its weights
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _shards(index_path: Path) -> list[str]:
    """The shard files an index's weight_map names, each once, sorted (as transformers reads them)."""
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataError(f"{index_path}: no weight_map naming the shard files")
    shards = set(weight_map.values())
    if any(not isinstance(shard, str) or Path(shard).name != shard for shard in shards):
        raise DataError(f"{index_path}: weight_map names something other than a file in this folder")
    return sorted(shards)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files from_pretrained reads from `folder` (present or not); empty when it has none."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return [folder / shard for shard in _shards(path)] if name.endswith(".index.json") else [path]
    return []


def missing_model_files(folder: str | Path) -> list[str]:
    """What a loadable model folder lacks: config.json, weights (every shard of an index)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} (no such folder)"]
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    files = weight_files(folder)
    if not files:
        return missing + ["weights (model.safetensors, pytorch_model.bin or a sharded index)"]
    return missing + [path.name for path in files if not path.is_file()]


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name and shape in one weight file, from the safetensors header or the .bin file's pickle
    (`weights_only`, on the meta device), without reading the weights. A damaged file is a DataError naming it."""
    import torch

    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as handle:
                return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        state_dict = torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[-1] if str(error) else type(error).__name__
        raise DataError(f"{path}: refused to unpickle weights that hold more than tensors ({reason})") from None
    except (SafetensorError, RuntimeError, EOFError) as error:
        reason = str(error).removeprefix("Error while deserializing header: ").split(". ")[0]
        raise DataError(f"{path}: damaged or truncated weight file ({reason})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise DataError(f"{path}: holds no name-to-tensor dictionary")
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def checkpoint_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape over the folder's weight files, read without loading the weights."""
    shapes = {}
    for path in weight_files(folder):
        shapes.update(tensor_shapes(path))
    return shapes


def weights_bytes(folder: str | Path, dtype: "torch.dtype") -> int:
    """How many bytes the folder's weights take in `dtype` (e.g. before choosing a precision that fits).

    Counted from the tensor shapes that the safetensors headers or the .bin pickles declare, so the stored dtype
    does not matter and nothing is loaded: the official bf16 Baichuan2-7B (7,505,973,248 parameters) gives
    15.0 GB in bfloat16 and 30.0 GB in float32.
    """
    return size_in(checkpoint_shapes(folder), dtype)


def size_in(shapes: dict[str, tuple[int, ...]], dtype: "torch.dtype") -> int:
    """Bytes that tensors of these shapes take in `dtype`."""
    return parameter_count(shapes) * dtype.itemsize


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    """How many numbers tensors of these shapes hold."""
    return sum(math.prod(shape) for shape in shapes.values())


def missing_adapter_files(folder: str | Path) -> list[str]:
    """What a LoRA adapter folder (peft's layout) lacks: adapter_config.json and the adapter's weights."""
    folder = Path(folder)
    missing = [] if (folder / ADAPTER_CONFIG).is_file() else [ADAPTER_CONFIG]
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        missing.append(" or ".join(ADAPTER_WEIGHT_FILES))
    return missing
