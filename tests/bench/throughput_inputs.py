"""Inputs of the benchmark tests: synthetic waimai-style reviews, a tiny model, and reading a benchmark's output."""

import csv
import random
from pathlib import Path

from tuning.model.tiny import build_tiny_base
from tuning.runtime.fileio import write_jsonl

POSITIVE = ["送餐很快", "味道不错", "分量很足", "包装很好", "服务好", "价格实惠", "下次还点"]
NEGATIVE = ["太慢了", "菜是凉的", "味道很差", "分量太少", "送错了", "再也不点了", "汤洒了"]


def synthetic_records(count: int, seed: int = 0) -> list[dict]:
    """Reviews of 1 to 12 phrases, so that lengths (and padding) vary as in waimai_10k."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        positive = index % 3 != 0
        phrases = POSITIVE if positive else NEGATIVE
        review = "，".join(rng.choice(phrases) for _ in range(rng.randint(1, 12)))
        records.append({"review": review, "label": "积极" if positive else "消极"})
    return records


def write_bench_files(folder: Path) -> Path:
    """train.jsonl, a waimai-style CSV, and a tiny random model folder whose tokenizer.model the train bench uses."""
    records = synthetic_records(120)
    write_jsonl(folder / "train.jsonl", records)
    with (folder / "waimai.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "review"])
        writer.writerows([1 if record["label"] == "积极" else 0, record["review"]] for record in records)
    build_tiny_base(folder / "train.jsonl", folder / "model")
    return folder


def run(main, argv: list[str], capsys) -> tuple[int, list[str], str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def table_row(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.split()[:1] == [name])
