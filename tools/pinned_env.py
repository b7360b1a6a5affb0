"""Exit 0 when this Python is 3.11+ and has requirements.txt's pinned set and this project installed.

Otherwise print the first thing that differs and exit 1. TORCH (default `torch==2.13.0`) replaces the torch pin:
a bare `torch` accepts any version (an Ascend torch / torch_npu pair, say).
"""

import os
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
PROJECT = "baichuan2-waimai"
MIN_PYTHON = (3, 11)  # the pinned transformers, numpy, pandas and matplotlib require it


def pinned_versions(requirements: str, torch: str) -> dict[str, str | None]:
    """Package name -> pinned version (None: any version) from `name==version` lines, torch taken from `torch`."""
    pins: dict[str, str | None] = {}
    for line in requirements.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip() or None
    name, _, version = torch.partition("==")
    pins[name.strip()] = version.strip() or None
    return pins


def first_difference(pins: dict[str, str | None]) -> str | None:
    """What this environment lacks, or None when it has every pin (a local version such as +cpu counts as the pin)."""
    if sys.version_info < MIN_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        return f"Python {found} is older than {'.'.join(map(str, MIN_PYTHON))}"
    for name, version in {**pins, PROJECT: None}.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"{name} is not installed"
        if version is not None and found.split("+")[0] != version:
            return f"{name} is {found}, pinned {version}"
    return None


def main() -> int:
    pins = pinned_versions(REQUIREMENTS.read_text(encoding="utf-8"), os.environ.get("TORCH", "torch==2.13.0"))
    difference = first_difference(pins)
    if difference:
        print(f"{sys.prefix}: {difference}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
