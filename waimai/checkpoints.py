"""Model folders and Trainer checkpoints: what is complete, which is the latest."""

import re
from pathlib import Path

from waimai.fileio import read_json

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
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


def missing_deepspeed_files(folder: str | Path) -> list[str]:
    """What a DeepSpeed checkpoint lacks: DeepSpeed writes `latest` (naming the global_step folder) after the states.

    A folder with neither `latest` nor a global_step folder is no DeepSpeed checkpoint and lacks nothing.
    """
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        return ["latest"] if any(folder.glob("global_step*")) else []
    tag = latest.read_text(encoding="utf-8").strip()
    if not tag or not (folder / tag).is_dir():
        return [f"{tag or 'the folder'} named by latest"]
    patterns = ("*model_states.pt", "*optim_states.pt")
    return [f"{tag}/{pattern}" for pattern in patterns if not any((folder / tag).glob(pattern))]


def is_complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last, so its presence marks a finished save (and DeepSpeed's states)."""
    return (
        (folder / "trainer_state.json").is_file()
        and not missing_model_files(folder)
        and not missing_deepspeed_files(folder)
    )


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The `checkpoint-N` folder with the highest N that finished saving; interrupted ones are skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))
    ]
    for _, path in sorted(numbered, reverse=True):
        if is_complete_checkpoint(path):
            return path
    return None
