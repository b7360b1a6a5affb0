"""Checks of the installed stack against requirements.txt that say what to install instead of failing later."""

import os
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
EXACT = ("transformers", "accelerate", "deepspeed", "peft")  # what train.py relies on beyond their public API
# Accelerator machines bring their own torch (the one torch_npu and CANN were built for, or a CUDA image's): any
# release in this range is accepted. transformers 5.24 disables itself on torch older than 2.6
# (transformers/utils/import_utils.py, is_torch_available); 2.13 is the newest tested.
SUPPORTED_TORCH_RANGE = ">=2.6,<2.14"
SUPPORTED_TORCH = SpecifierSet(SUPPORTED_TORCH_RANGE)
# torch_npu releases for torch 2.6 or later and the CANN each needs: (CANN, torch, torch_npu), from the version
# table of Ascend/pytorch (COMPATIBILITY.en.md). docs/hardware.md has the same table.
TORCH_NPU_RELEASES = (
    ("8.2.RC1", "2.6.0", "2.6.0"),
    ("8.3.RC1", "2.6.0", "2.6.0.post3"), ("8.3.RC1", "2.7.1", "2.7.1"), ("8.3.RC1", "2.8.0", "2.8.0"),
    ("8.5.0", "2.6.0", "2.6.0.post5"), ("8.5.0", "2.7.1", "2.7.1.post2"), ("8.5.0", "2.8.0", "2.8.0.post2"),
    ("8.5.0", "2.9.0", "2.9.0"),
    ("9.0.0", "2.7.1", "2.7.1.post4"), ("9.0.0", "2.8.0", "2.8.0.post4"), ("9.0.0", "2.9.0", "2.9.0.post2"),
    ("9.1.0", "2.7.1", "2.7.1.post8"), ("9.1.0", "2.9.0", "2.9.0.post6"), ("9.1.0", "2.10.0", "2.10.0.post4"),
    ("9.1.0", "2.11.0", "2.11.0"), ("9.1.0", "2.12.0", "2.12.0"),
)


def pinned_versions(path: Path = REQUIREMENTS) -> dict[str, str]:
    """`name==version` lines of requirements.txt."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, separator, version = line.split("#")[0].strip().partition("==")
        if separator:
            pins[name.strip().lower()] = version.strip()
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """`2.13.0+cu128` and `2.13.0.post1` -> (2, 13, 0)."""
    return Version(version).release[:3]


def _supported(version: str) -> bool:
    return Version(".".join(map(str, _release(version)))) in SUPPORTED_TORCH


def installed_cann() -> str | None:
    """The CANN version of the toolkit that set_env.sh pointed ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME at, from its
    `ascend_*_install.info` (`version=8.5.0`) in that folder or one below; None when not found."""
    for variable in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        home = os.environ.get(variable)
        if not home:
            continue
        for info in sorted([*Path(home).glob("ascend_*_install.info"), *Path(home).glob("*/ascend_*_install.info")]):
            for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
                key, separator, value = line.partition("=")
                if separator and key.strip().lower() == "version":
                    return value.strip()
    return None


def torch_npu_pairs(cann: str | None) -> str:
    """The torch / torch_npu pairs to install: the newest released for `cann`, or the newest for each CANN."""
    newest: dict[str, tuple[str, str]] = {}
    for release_cann, torch_version, torch_npu_version in TORCH_NPU_RELEASES:
        newest[release_cann] = (torch_version, torch_npu_version)
    for release_cann, (torch_version, torch_npu_version) in newest.items():
        if cann and cann.upper().startswith(release_cann.upper()):
            return f"for CANN {cann}: pip install torch=={torch_version} torch_npu=={torch_npu_version}"
    listed = "; ".join(f"CANN {release_cann}: torch=={torch_version} torch_npu=={torch_npu_version}"
                       for release_cann, (torch_version, torch_npu_version) in newest.items())
    found = f"CANN {cann} is not in the table" if cann else "no CANN version found"
    return f"the pair released for your CANN ({found}; {listed}; docs/hardware.md)"


def torch_problems(pins: dict[str, str]) -> list[str]:
    """torch in the supported range; on an Ascend machine torch and torch_npu as one released pair."""
    torch_version = installed_version("torch")
    torch_npu_version = installed_version("torch_npu")
    if torch_npu_version is None:
        if torch_version is not None and _supported(torch_version):
            return []
        state = "is not installed" if torch_version is None else f"{torch_version} is installed"
        return [f"torch {state} but this project needs torch{SUPPORTED_TORCH_RANGE} (tested: {pins['torch']}): "
                f"pip install torch=={pins['torch']}"]
    if not _supported(torch_npu_version):
        return [f"torch_npu {torch_npu_version} is installed but this project needs torch and torch_npu "
                f"{SUPPORTED_TORCH_RANGE} (transformers 5.24 needs torch 2.6 or later): install "
                f"{torch_npu_pairs(installed_cann())}"]
    if torch_version is None or _release(torch_npu_version) != _release(torch_version):
        torch_release = ".".join(map(str, _release(torch_npu_version)))
        return [f"torch_npu {torch_npu_version} does not match torch {torch_version}: pip install "
                f"torch=={torch_release}, the torch that torch_npu {torch_npu_version} was released for"]
    return []


def version_problems(pins: dict[str, str] | None = None) -> list[str]:
    """What differs from the pinned stack, each with the command that fixes it."""
    pins = pinned_versions() if pins is None else pins
    problems = []
    for name in EXACT:
        found = installed_version(name)
        if found is None or Version(found) != Version(pins[name]):
            state = "is not installed" if found is None else f"{found} is installed"
            problems.append(f"{name} {state} but this project needs {pins[name]}: pip install {name}=={pins[name]}")
    return problems + torch_problems(pins)
