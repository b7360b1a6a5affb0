"""Shared by the throughput benchmarks: default paths, the data split, the machine/versions header, tables."""

import importlib.metadata
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from tuning.data.waimai_csv import build_dataset, write_dataset
from tuning.run_layout import run_defaults
from tuning.runtime.devices import Device
from tuning.runtime.errors import DataError
from tuning.runtime.paths import REPO_ROOT

SHARED_DIR = Path(os.environ.get("SHARED_DIR", REPO_ROOT.parent / "shared"))
SHARED_CSV = SHARED_DIR / "data" / "waimai_10k.csv"
# Environment variables that change what a benchmark measures; shown in front of the command when set.
COMMAND_ENV = ("OMP_NUM_THREADS", "WAIMAI_DEVICE", "SHARED_DIR", "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES")


def default_tokenizer() -> Path:
    """The real Baichuan2 tokenizer.model: from $SHARED_DIR (or ../shared), else from the 7B recipe's model folder."""
    shared, model = SHARED_DIR / "baichuan2" / "tokenizer.model", run_defaults().base_model / "tokenizer.model"
    return shared if shared.is_file() or not model.is_file() else model


def default_data(split: str) -> Path:
    """data/<split>.jsonl made by make_data.py, else the waimai_10k.csv in $SHARED_DIR (or ../shared)."""
    jsonl = REPO_ROOT / "data" / f"{split}.jsonl"
    return jsonl if jsonl.is_file() else SHARED_CSV


def split_jsonl(data: Path, split: str, workdir: Path) -> Path:
    """The JSONL file of `split` ("train" or "eval"): `data` itself, or a CSV split into `workdir` like make_data.py."""
    if data.suffix.lower() != ".csv":
        return data
    if not data.is_file():
        raise DataError(f"{data}: file not found; pass --data (data/{split}.jsonl of make_data.py, or waimai_10k.csv)")
    write_dataset(build_dataset(data), workdir)
    return workdir / f"{split}.jsonl"


def display_path(path: Path) -> str:
    """`path` for a report: relative to the repository, or to $SHARED_DIR; never the machine's absolute path."""
    resolved = path.resolve()
    for root, shown in ((REPO_ROOT, ""), (SHARED_DIR.resolve(), "$SHARED_DIR/")):
        if resolved.is_relative_to(root):
            return shown + str(resolved.relative_to(root))
    return path.name


def machine_description(device: Device) -> str:
    """The processor (and accelerators) in words; no host name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    text = f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {memory / 2**30:.0f} GiB RAM"
    if device.kind != "cpu":
        text += f"; {device.count} x {device.name()} ({device.kind})"
    return text


def header_lines(device: Device, dtype: torch.dtype) -> list[str]:
    """Machine, versions, date and the exact command, for RESULTS.md."""
    versions = f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    if device.kind == "cuda":
        versions += f", CUDA {torch.version.cuda}"
    if device.kind == "npu":
        versions += f", torch_npu {importlib.metadata.version('torch_npu')}"
    settings = [f"{name}={os.environ[name]}" for name in COMMAND_ENV if name in os.environ]
    command = " ".join(shlex.quote(part) for part in [*settings, Path(sys.executable).name, *sys.argv])
    return [
        f"machine:  {machine_description(device)}",
        f"device:   {device.kind}, {str(dtype).removeprefix('torch.')}",
        f"versions: {versions}",
        f"date:     {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"command:  {command}",
    ]


def format_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first `text_columns` left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if column < text_columns else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_bytes(count: int | None) -> str:
    return "n/a" if count is None else f"{count / 2**30:.2f} GiB"
