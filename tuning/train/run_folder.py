"""A training run's folder: its manifest and resolved configuration, its checkpoints, and the resume decision.

Files train.py writes in OUTPUT_DIR:
- run_manifest.json: what makes two runs the same run (model, data, encoding); a folder holding another run is
  refused, and a re-run of the same run continues from its latest complete checkpoint. It also records the run's
  shape (processes, ZeRO stage, precision): DeepSpeed's checkpoints resume only with the same shape;
- run_config.json: every setting's final value (`{"recipe", "model", "data", "lora", "training"}`); run_test.py and
  predict.py read the prompt settings from it;
- train_summary.json, training_curves.png, checkpoint-N/ folders and the final model. A LoRA run's checkpoints
  hold the adapter (adapter_config.json, adapter_model.safetensors); its final model is the merged one, with the
  adapter alone in adapter/.

ds_run_bf16.sh names the folder: output/baichuan2-7b-waimai (the 7B) or output/demo/tiny-tuned (the CPU demo), with
`-lora` appended for LoRA runs (USE_LORA=true), so that a LoRA run never continues or overwrites a full one.
"""

import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tuning.model.files import missing_adapter_files, missing_model_files
from tuning.runtime.distributed import broadcast_from_main, gather_from_all, global_rank, is_main_process
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_json

MANIFEST_NAME = "run_manifest.json"
CONFIG_NAME = "run_config.json"
SUMMARY_NAME = "train_summary.json"
CURVES_NAME = "training_curves.png"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
SHAPE_KEYS = ("world_size", "zero_stage", "precision")
SHARED_CHECK_WAIT_S = 10.0  # how long a process waits to see rank 0's file (network file systems cache lookups)
ADAPTER_DIR = "adapter"  # a LoRA run's adapter alone, beside the merged model
LORA_SUFFIX = "-lora"
# USE_LORA's values, as train.py's --use_lora reads them
TRUE_WORDS, FALSE_WORDS = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0", "")


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
    """The Trainer writes trainer_state.json last, so its presence marks a finished save (and DeepSpeed's states).

    The weights are a model's, or a LoRA run's adapter.
    """
    return (
        (folder / "trainer_state.json").is_file()
        and (not missing_model_files(folder) or not missing_adapter_files(folder))
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


def _shown(key: str, value: object) -> str:
    """An identity value for an error message; `lora` is None for full fine-tuning (manifests older than LoRA)."""
    if key != "lora":
        return repr(value)
    if value is None:
        return "full fine-tuning"
    return "LoRA " + ", ".join(f"{name} {','.join(item) if isinstance(item, list) else item}"
                               for name, item in value.items())


def check_output_dir(output_dir: Path, identity: dict) -> None:
    """Refuse a folder that holds another run: a different manifest, or files but no manifest (logs aside)."""
    manifest = output_dir / MANIFEST_NAME
    if manifest.is_file():
        recorded = read_json(manifest)
        for key, value in identity.items():
            if recorded.get(key) != value:
                raise DataError(
                    f"{output_dir} holds another run ({key}: {_shown(key, recorded.get(key))} there, "
                    f"{_shown(key, value)} now); choose another --output_dir"
                )
    elif output_dir.is_dir():
        foreign = sorted(path.name for path in output_dir.iterdir() if path.suffix != ".log")
        if foreign:
            raise DataError(
                f"{output_dir} holds files but no {MANIFEST_NAME} (another run's? {', '.join(foreign[:3])}); "
                "choose another --output_dir"
            )


def run_shape(world_size: int, zero_stage: int | None, precision: str) -> dict:
    """What a DeepSpeed checkpoint of this run can only be resumed with (recorded in the manifest)."""
    return dict(zip(SHAPE_KEYS, (world_size, zero_stage, precision)))


def check_resume_shape(output_dir: Path, checkpoint: str, shape: dict) -> None:
    """Refuse to resume a checkpoint saved with another number of processes, ZeRO stage or precision."""
    manifest = output_dir / MANIFEST_NAME
    recorded = read_json(manifest) if manifest.is_file() else {}
    changed = [key for key in SHAPE_KEYS if key in recorded and recorded[key] != shape[key]]
    if changed:
        then = ", ".join(f"{key} {recorded[key]}" for key in changed)
        now = ", ".join(f"{key} {shape[key]}" for key in changed)
        raise DataError(
            f"{checkpoint} was saved with {then}, this launch has {now}: launch it as it was saved, start a new "
            "OUTPUT_DIR, or convert the checkpoint to DeepSpeed's universal format (python -m "
            'deepspeed.checkpoint.ds_to_universal) and resume with "checkpoint": {"load_universal": true}'
        )


def check_shared_output_dir(output_dir: Path) -> None:
    """Every process sees the file rank 0 writes in output_dir; else DataError on every process (collective)."""
    name = None
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        name = f".shared-check-{secrets.token_hex(8)}"
        (output_dir / name).write_text(socket.gethostname(), encoding="utf-8")
    marker = output_dir / broadcast_from_main(name)  # each process looks in the folder it was given
    deadline = time.monotonic() + SHARED_CHECK_WAIT_S
    while not marker.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    views = gather_from_all((global_rank(), socket.gethostname(), marker.is_file()))
    if is_main_process():
        marker.unlink()
    blind = [f"rank {rank} on {host}" for rank, host, seen in views if not seen]
    if blind:
        raise DataError(
            f"--output_dir {output_dir} is not one shared folder: {', '.join(blind)} cannot see the files rank 0 "
            "writes there; OUTPUT_DIR must be on a file system shared by all machines"
        )


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: str | None  # the checkpoint to continue from; None: train from the start
    finished: str | None = None  # why there is nothing to train; None: train


def plan_resume(output_dir: Path, identity: dict, resume_flag: str | None, shape: dict, max_steps: int,
                epochs: float) -> ResumePlan:
    """Whether and where this run continues in output_dir (made once, on rank 0, in a launch)."""
    check_output_dir(output_dir, identity)
    checkpoint = resolve_resume(resume_flag, output_dir)
    if checkpoint and already_trained(output_dir, checkpoint, max_steps, epochs):
        return ResumePlan(checkpoint, f"{output_dir} already holds this run's final model ({Path(checkpoint).name}); "
                                      "nothing to train")
    if not checkpoint and (output_dir / SUMMARY_NAME).is_file():
        return ResumePlan(None, f"{output_dir} already holds a finished run ({SUMMARY_NAME}) and no checkpoint to "
                                "continue from; nothing to train (choose another --output_dir to train again)")
    if checkpoint:
        check_resume_shape(output_dir, checkpoint, shape)
    return ResumePlan(checkpoint)


def resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`auto`: the latest complete checkpoint in output_dir, if any; otherwise a folder that must be complete."""
    if value in (None, "", "auto"):
        latest = latest_complete_checkpoint(output_dir)
        return str(latest) if latest else None
    if not is_complete_checkpoint(Path(value)):
        raise DataError(f"--resume_from_checkpoint {value}: not a complete checkpoint folder")
    return value


def already_trained(output_dir: Path, checkpoint: str, max_steps: int, epochs: float) -> bool:
    """The checkpoint reached the planned steps (or epochs) and output_dir holds the final outputs of that step.

    Resumed at its last step with --max_steps, the Trainer would train one step more.
    """
    state = read_json(Path(checkpoint) / "trainer_state.json")
    planned_done = state["global_step"] >= max_steps if max_steps > 0 else state["epoch"] >= epochs
    summary_path = output_dir / SUMMARY_NAME
    if not planned_done or not summary_path.is_file():
        return False
    return read_json(summary_path).get("global_step") == state["global_step"]


def run_folder_of(model_dir: str | Path) -> Path:
    """The training run folder of a saved model: the folder itself, or the parent of a checkpoint-N."""
    model_dir = Path(model_dir)
    return model_dir.parent if CHECKPOINT_PATTERN.match(model_dir.name) else model_dir


def tuned_model_in(run_dir: str | Path) -> Path:
    """The final model saved in a training run folder (a LoRA run's merged model), else its latest complete
    `checkpoint-N` that holds a model."""
    run_dir = Path(run_dir)
    if not missing_model_files(run_dir):
        return run_dir
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise DataError(
            f"{run_dir}: no final model and no complete checkpoint-N folder "
            "(train one first with `bash ds_run_bf16.sh`)"
        )
    if missing_model_files(checkpoint):
        raise DataError(
            f"{run_dir}: no merged model yet, and {checkpoint.name} holds only a LoRA adapter: run the same training "
            f"command again to finish, or merge it with `python -m tuning.train.lora --base_model BASE --adapter "
            f"{checkpoint} --output_dir DIR`"
        )
    return checkpoint


def use_lora_from_environment() -> bool:
    """USE_LORA as the launchers read it: true/yes/1 or false/no/0 (any case); unset or empty is false."""
    value = os.environ.get("USE_LORA", "")
    if value.lower() not in TRUE_WORDS + FALSE_WORDS:
        raise DataError(f"USE_LORA={value}: expected true or false")
    return value.lower() in TRUE_WORDS


def lora_run(run_dir: Path) -> Path:
    """The output folder ds_run_bf16.sh gives the LoRA run of a recipe whose full run writes to `run_dir`."""
    return run_dir.with_name(run_dir.name + LORA_SUFFIX)



def recorded_run_config(model_dir: str | Path) -> tuple[Path, dict] | None:
    """(path, contents) of the run_config.json written with a tuned model; None for a model trained elsewhere."""
    path = run_folder_of(model_dir) / CONFIG_NAME
    return (path, read_json(path)) if path.is_file() else None
