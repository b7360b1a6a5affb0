"""What a loadable model folder holds: config.json and every weight file."""

from pathlib import Path

from tuning.runtime.fileio import read_json

SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def missing_model_files(folder: str | Path) -> list[str]:
    """What a loadable model folder lacks: config.json, weights (every shard of an index)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} (no such folder)"]
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if any((folder / name).is_file() for name in SINGLE_WEIGHT_FILES):
        return missing
    for index_name in INDEX_FILES:
        index_path = folder / index_name
        if index_path.is_file():
            shards = set(read_json(index_path).get("weight_map", {}).values())
            return missing + sorted(shard for shard in shards if not (folder / shard).is_file())
    return missing + ["weights (model.safetensors, pytorch_model.bin or a sharded index)"]
