"""One run at a time in an output folder: a lock file that names its holder (host, PID), kept fresh by a heartbeat.

The holder creates the file complete in one step (written beside it, then hard-linked into place, which fails if
the lock exists: also atomic on NFS) and refreshes its modification time every HEARTBEAT_S seconds on a daemon
thread. Another run finds the lock and is refused with the holder named, unless the lock is stale:
- on the holder's host, its process is gone (or its PID now belongs to a process started later);
- from another host, whose processes cannot be seen, the lock has not been refreshed for STALE_AFTER_S seconds.
A stale lock is taken over, with a note saying whose it was. The holder removes the lock when it is done.

A launcher takes the lock before its processes start, so that a second launch is refused at once rather than after
the first one's startup: `python -m tuning.runtime.lock take DIR --pid PID` takes it for the launcher's process PID
and prints its token, which the launcher hands to its processes (LAUNCH_LOCK_VARIABLE); the process that takes the
lock with `adopt=` that token becomes its holder instead of being refused.
"""

import argparse
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import atomic_writer

LOCK_NAME = ".run.lock"  # the lock's file in the folder it keeps to one run
LAUNCH_LOCK_VARIABLE = "WAIMAI_LAUNCH_LOCK"  # the token of the lock a launcher took for its processes
HEARTBEAT_S = 10.0  # how often the holder refreshes the lock's modification time
STALE_AFTER_S = 120.0  # a lock not refreshed for this long is stale when its holder's host cannot be checked


def process_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (Linux /proc; None where it cannot be read): tells a live
    process from a later one that reuses its PID."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # field 22 of stat; the two before the split (pid, comm) are gone


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _holder_text(token: str, pid: int) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid),
                       "token": token, "since": time.time()})


def stale_reason(holder: dict, age_s: float) -> str | None:
    """Why the lock of `holder` (refreshed `age_s` seconds ago) is stale; None while its run may still be going."""
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        if not process_alive(pid):
            return f"process {pid} is gone"
        started = holder.get("pid_start")
        if started is not None and process_start_time(pid) not in (None, started):
            return f"PID {pid} now belongs to another process"
        return None
    if age_s > STALE_AFTER_S:
        return f"not refreshed for {age_s:.0f} s (more than {STALE_AFTER_S:.0f} s)"
    return None


@dataclass
class FolderLock:
    """A lock held by this process; `note` says whose stale lock it replaced, if any."""

    path: Path
    token: str
    note: str | None
    _stop: threading.Event

    @classmethod
    def take(cls, path: str | Path, what: str = "run", pid: int | None = None,
             adopt: str | None = None) -> "FolderLock":
        """Take the lock at `path` for process `pid` (default: this one), or raise DataError naming the live holder
        (`what` names the lock's user). A lock holding the token `adopt` is this launch's: it is taken over."""
        path = Path(path)
        pid = os.getpid() if pid is None else pid
        token = secrets.token_hex(8)
        taken_over = None
        for _ in range(5):  # each round either takes the lock or moves a stale one aside
            if _create(path, _holder_text(token, pid)):
                return cls._held(path, token, taken_over)
            try:
                text, age_s = path.read_text(encoding="utf-8"), time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            try:
                holder = json.loads(text)
            except json.JSONDecodeError:
                holder = {}
            if adopt and holder.get("token") == adopt:
                with atomic_writer(path) as handle:
                    handle.write(_holder_text(adopt, pid))
                return cls._held(path, adopt, None)
            reason = stale_reason(holder, age_s) if holder else "unreadable"
            who = f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}"
            if reason is None:
                raise DataError(f"{path.parent} is in use by another {what} ({who}, lock file {path.name}); wait "
                                "for it to finish or choose another output folder")
            if _move_aside(path, text):
                taken_over = f"took over the stale lock {path} of {who}: {reason}"
        raise DataError(f"{path}: could not take the lock (other runs keep taking it)")

    @classmethod
    def _held(cls, path: Path, token: str, note: str | None) -> "FolderLock":
        """The lock this process now holds at `path`, its heartbeat started."""
        lock = cls(path, token, note, threading.Event())
        lock._start_heartbeat()
        return lock

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # the next beat tries again; a lock gone missing is found at release
        threading.Thread(target=beat, name="lock-heartbeat", daemon=True).start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this process's."""
        self._stop.set()
        release_token(self.path, self.token)


def keep_fresh(path: Path, token: str, pid: int) -> None:
    """Refresh the lock at `path` every HEARTBEAT_S seconds while it holds `token` and process `pid` is alive."""
    while process_alive(pid):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("token") != token:
                return
            os.utime(path)
        except (OSError, json.JSONDecodeError):
            return
        time.sleep(HEARTBEAT_S)


def release_token(path: Path, token: str) -> None:
    """Remove the lock at `path` if it still holds `token`."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("token") == token:
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass


def _create(path: Path, text: str) -> bool:
    """Write `text` to a new file at `path` in one step; False if `path` exists."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    temp.write_text(text, encoding="utf-8")
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink()
    return True


def _move_aside(path: Path, stale_text: str) -> bool:
    """Remove the stale lock at `path` whose contents were `stale_text`; a lock taken by another run in between
    (different contents) is put back. True when the stale lock is gone."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if aside.read_text(encoding="utf-8") != stale_text:
        _create(path, aside.read_text(encoding="utf-8"))
        aside.unlink()
        return False
    aside.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.runtime.lock",
        description="A launcher's lock on an output folder (ds_run_bf16.sh): `take DIR --pid PID` takes DIR's lock "
                    f"for process PID and prints its token ({LAUNCH_LOCK_VARIABLE} for the launch's processes), or "
                    "names the live holder in one line (exit 2); `keep DIR --token TOKEN --pid PID` refreshes it "
                    "while it holds TOKEN and PID is alive; `release DIR --token TOKEN` removes it if it still holds "
                    "TOKEN.")
    parser.add_argument("action", choices=("take", "keep", "release"))
    parser.add_argument("folder", type=Path, help="the output folder")
    parser.add_argument("--pid", type=int, help="the process that holds the lock (default: this one)")
    parser.add_argument("--token", help="keep, release: the token `take` printed")
    args = parser.parse_args(argv)
    path = args.folder / LOCK_NAME

    def work() -> int:
        if args.action != "take" and not args.token:
            raise DataError(f"{args.action} needs --token, the token `take` printed")
        if args.action == "keep":
            keep_fresh(path, args.token, os.getpid() if args.pid is None else args.pid)
            return 0
        if args.action == "release":
            release_token(path, args.token)
            return 0
        lock = FolderLock.take(path, "training run", pid=args.pid)
        if lock.note:
            print(f"note: {lock.note}", file=sys.stderr)
        print(lock.token)
        return 0

    return report_errors(work)


if __name__ == "__main__":
    sys.exit(main())
