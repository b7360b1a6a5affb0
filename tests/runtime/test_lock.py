"""The output folder's lock: a second run is refused naming the holder; a stale lock is taken over with a note."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from lock_holder import start_lock_holder

from tuning.runtime import lock as lock_module
from tuning.runtime.errors import DataError
from tuning.runtime.lock import FolderLock, process_start_time
from tuning.runtime.paths import REPO_ROOT


def test_a_second_process_is_refused_naming_the_first_until_it_releases(tmp_path):
    path = tmp_path / ".run.lock"
    first = start_lock_holder(path)
    assert first.stdout.readline() == "held\n"
    second = start_lock_holder(path)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert err == (f"error: {tmp_path} is in use by another run (host {socket.gethostname()}, PID {first.pid}, lock "
                   "file .run.lock); wait for it to finish or choose another output folder\n")
    first.communicate("done\n", timeout=60)
    assert first.returncode == 0 and not path.exists()  # released
    lock = FolderLock.take(path)  # free again
    assert lock.note is None
    lock.release()


def _write_lock(path, **holder) -> None:
    path.write_text(json.dumps(holder), encoding="utf-8")


def test_a_killed_runs_lock_is_taken_over_with_a_note(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = tmp_path / ".run.lock"
    _write_lock(path, host=socket.gethostname(), pid=gone.pid, pid_start=1, token="old")
    lock = FolderLock.take(path)
    assert lock.note == (f"took over the stale lock {path} of host {socket.gethostname()}, PID {gone.pid}: process "
                         f"{gone.pid} is gone")
    assert json.loads(path.read_text(encoding="utf-8"))["pid"] == os.getpid()
    lock.release()
    assert sorted(tmp_path.iterdir()) == []  # nothing left beside it


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    path = tmp_path / ".run.lock"
    _write_lock(path, host=socket.gethostname(), pid=os.getpid(), pid_start=process_start_time(os.getpid()) - 1)
    lock = FolderLock.take(path)
    assert lock.note.endswith(f"PID {os.getpid()} now belongs to another process")
    lock.release()


def test_another_hosts_lock_is_stale_only_without_its_heartbeat(tmp_path):
    path = tmp_path / ".run.lock"
    _write_lock(path, host="node-7", pid=4242)
    with pytest.raises(DataError, match=r"in use by another run \(host node-7, PID 4242, lock file \.run\.lock\)"):
        FolderLock.take(path)
    old = time.time() - lock_module.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    lock = FolderLock.take(path)
    assert "of host node-7, PID 4242: not refreshed for" in lock.note
    lock.release()


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.01)
    path = tmp_path / ".run.lock"
    lock = FolderLock.take(path)
    os.utime(path, (0, 0))
    deadline = time.monotonic() + 60
    while path.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    refreshed = path.stat().st_mtime > 0
    lock.release()
    assert refreshed and not path.exists()


def test_release_leaves_another_runs_lock_alone(tmp_path):
    path = tmp_path / ".run.lock"
    lock = FolderLock.take(path)
    _write_lock(path, host="node-7", pid=1, token="theirs")  # as if taken over after this run was judged stale
    lock.release()
    assert json.loads(path.read_text(encoding="utf-8"))["token"] == "theirs"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuning.runtime.lock", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_a_launchers_lock_passes_to_the_process_with_its_token_and_to_no_other(tmp_path):
    path = tmp_path / lock_module.LOCK_NAME
    taken = _cli("take", str(tmp_path), "--pid", str(os.getpid()))  # a launcher takes it for its own process
    assert taken.returncode == 0 and taken.stderr == ""
    token = taken.stdout.strip()
    assert json.loads(path.read_text(encoding="utf-8"))["pid"] == os.getpid()
    with pytest.raises(DataError, match="in use by another run"):
        FolderLock.take(path, adopt="0123456789abcdef")
    lock = FolderLock.take(path, adopt=token)
    assert lock.note is None and json.loads(path.read_text(encoding="utf-8"))["token"] == token
    second = _cli("take", str(tmp_path))
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr == (f"error: {tmp_path} is in use by another training run (host {socket.gethostname()}, PID "
                             f"{os.getpid()}, lock file .run.lock); wait for it to finish or choose another output "
                             "folder\n")
    assert _cli("release", str(tmp_path), "--token", "0123456789abcdef").returncode == 0 and path.exists()
    assert _cli("release", str(tmp_path), "--token", token).returncode == 0 and not path.exists()
    lock.release()


def test_the_launchers_keeper_refreshes_the_lock_until_its_process_ends_or_the_lock_changes_hands(tmp_path,
                                                                                                    monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.01)
    path = tmp_path / lock_module.LOCK_NAME
    launcher = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    token = "0123456789abcdef"
    _write_lock(path, host=socket.gethostname(), pid=launcher.pid, token=token)
    os.utime(path, (0, 0))
    keeper = threading.Thread(target=lock_module.keep_fresh, args=(path, token, launcher.pid))
    keeper.start()
    deadline = time.monotonic() + 60
    while path.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_mtime > 0
    launcher.communicate(b"\n", timeout=60)
    keeper.join(timeout=60)
    assert not keeper.is_alive()  # the launcher is gone: the lock is left to go stale
    _write_lock(path, host="node-7", pid=4242, token="theirs")
    lock_module.keep_fresh(path, token, os.getpid())  # returns at once: the lock is another run's now
    assert json.loads(path.read_text(encoding="utf-8"))["token"] == "theirs"
