"""What training does with its run folder: refuse another run's, check that every process sees it, lock it for
this launch, decide whether and where to resume.

The folder's layout (file names, checkpoints, the tuned model in it) is tuning/run_layout.py's. run_manifest.json
records what makes two runs the same run (model, data, encoding): a folder holding another run is refused, and a
re-run of the same run continues from its latest complete checkpoint. It also records the run's shape (processes,
ZeRO stage, precision): DeepSpeed's checkpoints resume only with the same shape.
"""

import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuning.run_layout import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    checkpoint_problem,
    checksum_problem,
    numbered_checkpoints,
)
from tuning.runtime.distributed import (
    broadcast_from_main,
    decided_by_main,
    gather_from_all,
    global_rank,
    is_main_process,
    leave_process_group,
    note,
)
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_json
from tuning.runtime.lock import LAUNCH_LOCK_VARIABLE, LOCK_NAME, FolderLock

SHAPE_KEYS = ("world_size", "zero_stage", "precision")
SHARED_CHECK_WAIT_S = 10.0  # how long a process waits to see rank 0's file (network file systems cache lookups)


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
        foreign = sorted(path.name for path in output_dir.iterdir() if path.suffix != ".log" and path.name != LOCK_NAME)
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
    """Every process sees the file rank 0 writes in output_dir; else DataError on every process, after they all left
    the process group together (collective)."""
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
        leave_process_group()
        raise DataError(
            f"--output_dir {output_dir} is not one shared folder: {', '.join(blind)} cannot see the files rank 0 "
            "writes there; OUTPUT_DIR must be on a file system shared by all machines"
        )


@contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """This launch's lock on output_dir, held while the block runs (collective: rank 0 takes it for every process of
    the launch, and releases it when the block ends, also on an error). Another launch's live lock is a DataError on
    every process; a stale one is taken over with a note; the one the launcher took for this launch (its token in
    LAUNCH_LOCK_VARIABLE) passes to rank 0."""
    lock = None

    def take() -> str | None:
        nonlocal lock
        lock = FolderLock.take(output_dir / LOCK_NAME, "training run", adopt=os.environ.get(LAUNCH_LOCK_VARIABLE))
        return lock.note

    taken_over = decided_by_main(take)
    if taken_over:
        note(taken_over)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


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


def resume_problem(checkpoint: Path) -> str | None:
    """Why training must not continue from `checkpoint`: an incomplete save, or files that are not those its save
    recorded (resuming unpickles DeepSpeed's and the Trainer's states, so only files this code wrote are loaded)."""
    return checkpoint_problem(checkpoint) or checksum_problem(checkpoint)


def resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`auto`: the latest checkpoint in output_dir that is complete and matches its record, if any, each newer one
    skipped with a note naming it; otherwise a folder that must be such a checkpoint."""
    if value in (None, "", "auto"):
        for checkpoint in numbered_checkpoints(output_dir):
            problem = resume_problem(checkpoint)
            if problem is None:
                return str(checkpoint)
            note(f"{checkpoint} skipped: {problem}")
        return None
    problem = resume_problem(Path(value))
    if problem:
        raise DataError(f"--resume_from_checkpoint {value}: not a checkpoint to resume from: {problem}")
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
