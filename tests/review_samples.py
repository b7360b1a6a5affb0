"""Small labelled review files in make_data.py's JSONL format, cut from the real waimai_10k.csv."""

import csv
import json
from pathlib import Path

from tuning.data.prompt import LABEL_WORDS


def write_reviews(csv_path: Path, path: Path, per_label: int, skip: int = 0) -> Path:
    """`per_label` positive and negative reviews (after the first `skip` of each), alternating labels."""
    with open(csv_path, encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["review"].strip()]
    by_label = {label: [row["review"].strip() for row in rows if row["label"] == str(label)] for label in (1, 0)}
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(skip, skip + per_label):
            for label in (1, 0):
                record = {"review": by_label[label][index], "label": LABEL_WORDS[label]}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_review_split(csv_path: Path, folder: Path, train_per_label: int, eval_per_label: int) -> Path:
    """`folder`/train.jsonl and `folder`/eval.jsonl; the eval reviews follow the training ones, so none is in both."""
    write_reviews(csv_path, folder / "train.jsonl", per_label=train_per_label)
    write_reviews(csv_path, folder / "eval.jsonl", per_label=eval_per_label, skip=train_per_label)
    return folder
