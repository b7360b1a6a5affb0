"""Atomic file and folder writes, and validated JSON / JSONL reading."""

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from tuning.runtime.errors import DataError

HASH_THREADS = 8
# what torch and safetensors say when a write finds the disk full
NO_SPACE_MESSAGES = ("No space left on device", "os error 28", "iostream error", "file write failed")


def _default_file_mode() -> int:
    """The mode a plain `open()` would give a new file (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_writers(paths: list[str | Path], mode: str = "w") -> Iterator[list[IO]]:
    """Write each file to a temporary beside it; rename them all into place only once every one is written."""
    paths = [Path(path) for path in paths]
    encoding = None if "b" in mode else "utf-8"
    temps: list[str] = []
    try:
        with ExitStack() as stack:
            handles = []
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                temps.append(tmp_name)
                os.chmod(fd, _default_file_mode())
                handles.append(stack.enter_context(os.fdopen(fd, mode, encoding=encoding)))
            yield handles
            for handle in handles:
                handle.flush()
                os.fsync(handle.fileno())
        for tmp_name, path in zip(temps, paths):
            os.replace(tmp_name, path)
    except BaseException:
        for tmp_name in temps:
            Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside `path`, then rename it over `path`; on error, leave `path` untouched."""
    with atomic_writers([path], mode) as (handle,):
        yield handle


@contextmanager
def staging_folder(beside: str | Path) -> Iterator[Path]:
    """A new temporary folder next to `beside` (the same file system, so renames out of it are atomic), removed
    with whatever is left in it when the block ends."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def nearest_existing(path: str | Path) -> Path:
    """`path` itself if it exists, else its nearest parent that does."""
    path = Path(path)
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def check_output_folder(folder: str | Path, flag: str, names: tuple[str, ...] = ()) -> None:
    """Before any work: `folder` (or its nearest existing parent) is a writable folder, and none of the files
    `names` to be written there is a folder; else a DataError naming the flag."""
    folder = Path(folder)
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise DataError(f"{flag} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {folder}: {existing} is not writable")
    for name in names:
        if (folder / name).is_dir():
            raise DataError(f"{flag} {folder}: {folder / name} is a folder, where the file {name} goes")


def move_files(source: str | Path, target: str | Path, last: str) -> None:
    """Rename every file of `source` into `target`, the one named `last` after all the others and `target`'s own
    `last` removed first, so that a reader who waits for `last` finds the rest complete and of one save."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    (target / last).unlink(missing_ok=True)
    for path in sorted(source.iterdir(), key=lambda path: path.name == last):
        os.replace(path, target / path.name)


def replace_folder(source: str | Path, target: str | Path) -> None:
    """Rename the folder `source` to `target`; an existing `target` is moved aside first and removed afterwards."""
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    with staging_folder(target) as old:
        os.replace(target, old / target.name)
        os.replace(source, target)


def is_disk_full(error: BaseException) -> bool:
    """An error (or one it was raised from) of a write that failed for want of space: ENOSPC or a full quota, or
    the message torch's or safetensors' writers give for it (torch's C++ writer gives no reason)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(message in str(error) for message in NO_SPACE_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_megabytes(path: str | Path) -> int:
    """Free space on the file system of `path` (or of its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free // 2**20


def dump_json(payload: object, handle: IO) -> None:
    json.dump(payload, handle, ensure_ascii=False, indent=2)
    handle.write("\n")


def dump_jsonl(records: list[dict], handle: IO) -> None:
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_json(path: str | Path, payload: object) -> None:
    with atomic_writer(path) as handle:
        dump_json(payload, handle)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    with atomic_writer(path) as handle:
        dump_jsonl(records, handle)


def read_json(path: str | Path) -> dict:
    """Read a JSON object; a missing file or bad JSON raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({getattr(error, 'msg', error)})") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object")
    return payload


def sha256_of(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(folder: str | Path, exclude: str = "") -> list[str]:
    """Every file below `folder` as a path relative to it ('/'-separated, sorted), the one named `exclude` aside."""
    folder = Path(folder)
    names = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return sorted(name for name in names if name != exclude)


def sha256_of_files(folder: str | Path, exclude: str = "") -> dict[str, str]:
    """The SHA-256 of every file below `folder` (files_under), hashed on parallel threads (hashlib releases the
    GIL), so that a checkpoint's many shards take about as long as its largest."""
    folder = Path(folder)
    names = files_under(folder, exclude)
    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(names) or 1)) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_of(folder / name), names)))


def read_jsonl(
    path: str | Path, required_keys: tuple[str, ...] = (), validate: Callable[[dict], str | None] | None = None
) -> list[dict]:
    """Read one JSON object per line; a bad line raises DataError naming the file and line.

    `validate(record)` may return a message saying what is wrong with a record; it is raised with the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object")
            missing = [key for key in required_keys if key not in record]
            if missing:
                raise DataError(f"{path}:{line_number}: missing key(s) {', '.join(missing)}")
            problem = validate(record) if validate else None
            if problem:
                raise DataError(f"{path}:{line_number}: {problem}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records
