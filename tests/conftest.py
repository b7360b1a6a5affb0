"""Shared test fixtures: the repository, the real assets (data/ or `../shared`) and the tiny models built from them."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.fetch_assets import ASSETS, asset_places, find_asset

# Tiny models on 2 shared cores: one thread per process is faster than torch's default (set before torch loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
MISSING_ASSET_HINT = {name: f"run `{asset.fetch_command}`" for name, asset in ASSETS.items()}


def _asset(name: str) -> Path:
    """The asset's file in data/ or the shared folder; skips the test, naming the fetch command, when it is absent."""
    asset = ASSETS[name]
    path = find_asset(asset)
    if path is None:
        pytest.skip(f"needs {asset.path}: {MISSING_ASSET_HINT[name]}")
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """Which tests were skipped for a missing asset, and the one command that fetches it."""
    skipped_for: dict[str, list[str]] = {name: [] for name in ASSETS}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for name, hint in MISSING_ASSET_HINT.items():
            if hint in reason:
                skipped_for[name].append(report.nodeid)
    for name, tests in skipped_for.items():
        if tests:
            asset = ASSETS[name]
            places = " or ".join(str(path) for path in asset_places(asset))
            terminalreporter.write_sep("=", f"missing {asset.path}", yellow=True)
            terminalreporter.write_line(f"{len(tests)} tests skipped: {asset.path} is not at {places}; "
                                        f"fetch it with `{asset.fetch_command}`")
            for test in tests:
                terminalreporter.write_line(f"  {test}")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `accelerator` skip on a machine whose detected device is the CPU."""
    marked = [item for item in items if item.get_closest_marker("accelerator")]
    if not marked:
        return
    from tuning.runtime.devices import detect_device  # here: it imports torch
    from tuning.runtime.errors import DataError

    try:
        kind = detect_device().kind
    except DataError:  # e.g. WAIMAI_DEVICE=npu on a machine without one
        kind = "cpu"
    if kind == "cpu":
        skip = pytest.mark.skip(reason="needs a GPU or NPU")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def waimai_csv() -> Path:
    """The real waimai_10k.csv from data/ or ../shared; skips the test when it is absent."""
    return _asset("waimai")


@pytest.fixture(scope="session")
def baichuan_tokenizer_model() -> Path:
    """The real Baichuan2 tokenizer.model from data/ or ../shared; skips the test when it is absent."""
    return _asset("tokenizer")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The tiny official-layout Baichuan2 checkpoint and reference outputs (copied into tests/)."""
    return FIXTURES_DIR / "baichuan2_reference"


@pytest.fixture(scope="session")
def make_review_data(waimai_csv, tmp_path_factory) -> Callable[[int, int], Path]:
    """`make_review_data(train_per_label, eval_per_label)`: a new folder with train.jsonl and eval.jsonl.

    They hold that many positive and that many negative reviews of the real waimai_10k.csv, in make_data.py's format.
    """
    from review_samples import write_review_split

    def make(train_per_label: int, eval_per_label: int) -> Path:
        folder = tmp_path_factory.mktemp("reviews")
        return write_review_split(waimai_csv, folder, train_per_label, eval_per_label)

    return make


@pytest.fixture(scope="session")
def make_tiny_base(tmp_path_factory) -> Callable[..., Path]:
    """`make_tiny_base(data_dir, **options)`: a new tiny demo base model (tuning.model.tiny) built from data_dir/train.jsonl."""
    from tuning.model.tiny import build_tiny_base  # here, not above: it imports torch, which most tests never need

    def make(data_dir: Path, **options) -> Path:
        path = tmp_path_factory.mktemp("models") / "tiny-base"
        build_tiny_base(data_dir / "train.jsonl", path, **options)
        return path

    return make
