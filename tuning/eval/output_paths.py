"""Output paths checked before the work starts, so that a long run never ends in an error when it writes."""

import os
from pathlib import Path

from tuning.runtime.errors import DataError


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (made first if missing); None when they can."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK):
        return f"{existing} is not writable"
    return None


def check_output_folder(folder: Path, flag: str) -> None:
    problem = _unwritable(folder)
    if problem:
        raise DataError(f"{flag} {folder}: {problem}")


def check_output_file(path: Path, flag: str, suffixes: tuple[str, ...], source: Path | None = None) -> None:
    """`path` can be written (atomically, see fileio): a name ending in one of `suffixes`, not a folder, in a
    writable folder, and neither the file `source` (the input) nor a symlink or hard link to it."""
    if path.suffix.lower() not in suffixes:
        raise DataError(f"{flag} {path}: the name must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise DataError(f"{flag} {path}: is a folder; name a {' or '.join(suffixes)} file")
    if source is not None and path.exists() and source.exists() and os.path.samefile(path, source):
        raise DataError(f"{flag} {path}: is the input file {source} (or a link to it), which it would replace; "
                        "choose another name")
    problem = _unwritable(path.parent)
    if problem:
        raise DataError(f"{flag} {path}: {problem}")
