"""Checks of the installed stack against requirements.txt that say what to install instead of failing later."""

from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
EXACT = ("transformers", "accelerate", "deepspeed", "peft")  # what train.py relies on beyond their public API
# Accelerator machines bring their own torch (the one torch_npu and CANN were built for, or a CUDA image's): any
# release in this range is accepted. 2.5 is the first with TORCH_DEVICE_BACKEND_AUTOLOAD, which the launchers use.
SUPPORTED_TORCH_RANGE = ">=2.5,<2.14"
SUPPORTED_TORCH = SpecifierSet(SUPPORTED_TORCH_RANGE)


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


def version_problems(pins: dict[str, str] | None = None) -> list[str]:
    """What differs from the pinned stack, each with the command that fixes it."""
    pins = pinned_versions() if pins is None else pins
    problems = []
    for name in EXACT:
        found = installed_version(name)
        if found is None or Version(found) != Version(pins[name]):
            state = "is not installed" if found is None else f"{found} is installed"
            problems.append(f"{name} {state} but this project needs {pins[name]}: pip install {name}=={pins[name]}")
    torch_version = installed_version("torch")
    torch_npu_version = installed_version("torch_npu")
    if torch_npu_version is not None:
        if torch_version is None or _release(torch_npu_version) != _release(torch_version):
            problems.append(
                f"torch_npu {torch_npu_version} does not match torch {torch_version}: install the torch and torch_npu "
                "pair released for your CANN version (see README)"
            )
    if torch_version is None or Version(".".join(map(str, _release(torch_version)))) not in SUPPORTED_TORCH:
        state = "is not installed" if torch_version is None else f"{torch_version} is installed"
        problems.append(f"torch {state} but this project needs torch{SUPPORTED_TORCH_RANGE} (tested: {pins['torch']}): "
                        f"pip install torch=={pins['torch']}")
    return problems
