"""What a loadable model folder holds (config.json and every weight file), and what a LoRA adapter folder holds."""

from pathlib import Path

from tuning.runtime.fileio import read_json

SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"  # peft's save_pretrained: the adapter's settings and its weights
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


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


def missing_adapter_files(folder: str | Path) -> list[str]:
    """What a LoRA adapter folder (peft's layout) lacks: adapter_config.json and the adapter's weights."""
    folder = Path(folder)
    missing = [] if (folder / ADAPTER_CONFIG).is_file() else [ADAPTER_CONFIG]
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        missing.append(" or ".join(ADAPTER_WEIGHT_FILES))
    return missing
