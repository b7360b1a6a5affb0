"""Turn waimai_10k.csv into train.jsonl / eval.jsonl: cleaned, deduplicated, seeded and stratified by label."""

import argparse
import sys
from pathlib import Path

from tuning.data import waimai_csv
from tuning.runtime.cli import HelpFormatter, open_fraction, whole_number
from tuning.runtime.errors import report_errors
from tuning.runtime.fileio import check_output_folder
from tuning.runtime.paths import REPO_ROOT

DROP_REASONS = {
    "empty_review": "review empty after cleaning",
    "duplicate": "exact duplicates of an earlier (label, review) row",
    "conflicting_labels": "reviews that occur with both labels",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Prepare the waimai_10k food-delivery reviews (CSV with columns label,review; 1 = positive, "
            "0 = negative) for fine-tuning: writes train.jsonl and eval.jsonl, one "
            '{"review": ..., "label": "积极"|"消极"} per line, plus stats.json with the figures printed '
            "at the end. "
            "Reviews are cleaned (control characters removed, surrounding whitespace stripped), exact duplicates "
            "kept once, and reviews found with both labels dropped. The split is stratified by label (both files "
            "keep the label ratio) and no review is in both files. The same input and --seed always give "
            "byte-identical files. Default paths are inside this repository, wherever you run it from; "
            "paths you pass are relative to the current directory."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--csv", type=Path, default=REPO_ROOT / "data" / "waimai_10k.csv",
                        help="the input CSV, UTF-8 (with or without BOM) or GBK/GB18030 (detected)")
    parser.add_argument("--download", action="store_true",
                        help="when --csv does not exist yet, download it from --url; it is saved only if its "
                             "SHA-256 matches the published waimai_10k.csv (an existing --csv must be that file)")
    parser.add_argument("--url", default=waimai_csv.DOWNLOAD_URL, help="where --download fetches the CSV from")
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "data",
                        help="folder for train.jsonl, eval.jsonl and stats.json (replaced together, or not at all)")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the split and of the record order")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--train_size", type=whole_number(), default=10000,
                      help="training rows, the rest is eval; with no more rows than this, 80%% go to training")
    size.add_argument("--eval_ratio", type=open_fraction, default=None,
                      help="instead of --train_size: the share of rows for eval, e.g. 0.2")
    return parser.parse_args(argv)


def print_summary(stats: dict, paths: list[Path]) -> None:
    published = "  (the published waimai_10k.csv)" if stats["sha256"] == waimai_csv.WAIMAI_SHA256 else ""
    print(f"read     {stats['path']}: {stats['rows_read']} rows, {stats['encoding']}, "
          f"sha256 {stats['sha256'][:12]}…{published}")
    print(f"cleaned  {stats['reviews_cleaned']:6d} reviews (control characters, surrounding whitespace)")
    for reason, count in stats["dropped"].items():
        print(f"dropped  {count:6d} rows: {DROP_REASONS[reason]}")
    print(f"kept     {stats['rows_kept']} rows; split by {stats['split']['rule']}, seed {stats['split']['seed']}")
    for name in ("train", "eval"):
        split = stats[name]
        balance = ", ".join(f"{word} {count} ({count / split['rows']:.1%})"
                            for word, count in split.items() if word != "rows")
        print(f"{name:8s} {split['rows']:6d} rows: {balance}")
    print("wrote    " + ", ".join(str(path) for path in paths))


def prepare(args: argparse.Namespace) -> int:
    check_output_folder(args.output_dir, "--output_dir", waimai_csv.OUTPUT_FILES)
    if args.download:
        fetched = waimai_csv.fetch_csv(args.csv, args.url)
        print(f"downloaded {args.url} -> {args.csv} (sha256 verified)" if fetched
              else f"{args.csv} already is the published file; nothing downloaded")
    dataset = waimai_csv.build_dataset(args.csv, seed=args.seed, train_size=args.train_size,
                                       eval_ratio=args.eval_ratio)
    paths = waimai_csv.write_dataset(dataset, args.output_dir)
    print_summary(dataset.stats, paths)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
