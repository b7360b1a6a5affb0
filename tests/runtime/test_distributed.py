"""Decisions made once on rank 0 and checks every process agrees on, in a real 2-process gloo group."""

import json
import socket
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from tuning.runtime.distributed import decided_by_main
from tuning.runtime.errors import DataError
from tuning.train.run_folder import check_shared_output_dir


def _outcome(work) -> str:
    try:
        return f"ok {work()}"
    except DataError as error:
        return f"DataError {error}"


def _process(rank: int, workdir: Path, refusal: str) -> None:
    """Two decisions that succeed, then the refusal `refusal` (rank 0's decision, or a folder each rank sees alone)."""
    dist.init_process_group("gloo", init_method=f"file://{workdir / 'store'}", rank=rank, world_size=2)
    calls = workdir / "calls"

    def decide(result: str):
        with calls.open("a", encoding="utf-8") as log:
            log.write(f"{rank}\n")
        if result == "refuse":
            raise DataError(f"{workdir} holds another run")
        return result

    outcomes = {
        "decision": _outcome(lambda: decided_by_main(lambda: decide("resume from checkpoint-10"))),
        "shared": _outcome(lambda: check_shared_output_dir(workdir / "shared")),
    }
    if refusal == "decision":
        outcomes["refusal"] = _outcome(lambda: decided_by_main(lambda: decide("refuse")))
    else:
        outcomes["refusal"] = _outcome(lambda: check_shared_output_dir(workdir / f"folder-of-rank-{rank}"))
    outcomes["left_the_group"] = not dist.is_initialized()  # together, so that no process aborts at exit
    (workdir / f"rank{rank}.json").write_text(json.dumps(outcomes), encoding="utf-8")


def _outcomes(workdir: Path, refusal: str) -> list[dict]:
    workdir.mkdir()
    mp.spawn(_process, args=(workdir, refusal), nprocs=2, join=True)
    return [json.loads((workdir / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]


def test_rank_0_decides_once_and_every_process_gets_its_answer_or_its_error(tmp_path):
    outcomes = _outcomes(tmp_path / "decision", "decision")
    assert (tmp_path / "decision" / "calls").read_text(encoding="utf-8").split() == ["0", "0"]  # one per decision
    for outcome in outcomes:
        assert outcome == {"decision": "ok resume from checkpoint-10", "shared": "ok None",
                           "refusal": f"DataError {tmp_path / 'decision'} holds another run", "left_the_group": True}


def test_a_folder_that_is_not_shared_is_an_error_on_every_process(tmp_path):
    workdir = tmp_path / "per-rank"
    outcomes = _outcomes(workdir, "per_rank")
    assert [(outcome["refusal"], outcome["left_the_group"]) for outcome in outcomes] == [
        (f"DataError --output_dir {workdir / f'folder-of-rank-{rank}'} is not one shared folder: rank 1 on "
         f"{socket.gethostname()} cannot see the files rank 0 writes there; OUTPUT_DIR must be on a "
         "file system shared by all machines", True)
        for rank in (0, 1)
    ]
