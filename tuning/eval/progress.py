"""Progress of a long pass over many reviews: a line on stderr now and then with the time left, not a bar."""

import sys
import time
from collections.abc import Iterator
from typing import IO

EVERY_S = 10.0  # seconds between two lines


def _duration(seconds: float) -> str:
    """e.g. "40 s", "3 min 5 s", "2 h 10 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def reported(
    batches: list[list[int]], what: str, enabled: bool = True, every_s: float = EVERY_S, stream: IO[str] | None = None
) -> Iterator[list[int]]:
    """Each batch (of review indices) in turn; every `every_s` seconds a line such as "label scoring: 1,200/5,000
    reviews, 40 s left" on `stream` (stderr), and one with the time taken at the end. Nothing when not `enabled`."""
    total = sum(len(batch) for batch in batches)
    start = last = time.monotonic()
    done = 0
    for batch in batches:
        yield batch
        done += len(batch)
        now = time.monotonic()
        if enabled and done < total and now - last >= every_s:
            left = (now - start) / done * (total - done)
            print(f"{what}: {done:,}/{total:,} reviews, {_duration(left)} left", file=stream or sys.stderr, flush=True)
            last = now
    if enabled:
        print(f"{what}: {total:,} reviews in {_duration(time.monotonic() - start)}", file=stream or sys.stderr,
              flush=True)
