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


def _process(rank: int, workdir: Path) -> None:
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
        "refusal": _outcome(lambda: decided_by_main(lambda: decide("refuse"))),
        "shared": _outcome(lambda: check_shared_output_dir(workdir / "shared")),
        "per_rank": _outcome(lambda: check_shared_output_dir(workdir / f"folder-of-rank-{rank}")),
    }
    (workdir / f"rank{rank}.json").write_text(json.dumps(outcomes), encoding="utf-8")
    dist.destroy_process_group()


def test_rank_0_decides_once_and_every_process_gets_its_answer_or_its_error(tmp_path):
    mp.spawn(_process, args=(tmp_path,), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
    assert (tmp_path / "calls").read_text(encoding="utf-8").split() == ["0", "0"]  # one call per decision
    for outcome in outcomes:
        assert outcome["decision"] == "ok resume from checkpoint-10"
        assert outcome["refusal"] == f"DataError {tmp_path} holds another run"
        assert outcome["shared"] == "ok None"
    assert [outcome["per_rank"] for outcome in outcomes] == [
        f"DataError --output_dir {tmp_path / f'folder-of-rank-{rank}'} is not one shared folder: rank 1 on "
        f"{socket.gethostname()} cannot see the files rank 0 writes there; OUTPUT_DIR must be on a "
        "file system shared by all machines"
        for rank in (0, 1)
    ]
