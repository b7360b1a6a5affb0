"""`python -m tuning.train.merge_lora --base_model BASE --adapter ADAPTER --output_dir DIR`: merge an adapter (a LoRA
run's adapter/ or one of its checkpoint-N folders) into its base model, saved in the official layout."""

import argparse
import sys
from pathlib import Path

from tuning.model.files import missing_model_files
from tuning.runtime.cli import HelpFormatter
from tuning.runtime.errors import DataError, report_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.train.merge_lora",
        description="Merge a LoRA adapter into its base model and save the result in the official Baichuan2 layout "
        "(config.json, weights, our code files, tokenizer), in the dtype the base model is stored in. A LoRA run of "
        "train.py does this itself at its end; use this for one of its checkpoint-N folders.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--base_model", type=Path, required=True,
                        help="the base model folder the adapter was trained on")
    parser.add_argument("--adapter", type=Path, required=True,
                        help="a folder with adapter_config.json and adapter_model.safetensors (a LoRA run's "
                             "adapter/ or checkpoint-N)")
    parser.add_argument("--output_dir", type=Path, required=True,
                        help="where the merged model goes (no model there yet)")
    return parser.parse_args(argv)


def merge(base_model: Path, adapter: Path, output_dir: Path) -> int:
    if not missing_model_files(output_dir):
        raise DataError(f"--output_dir {output_dir} already holds a model; choose another folder")
    from tuning.train.lora import save_merged_model  # torch and peft load only once the flags are checked

    save_merged_model(base_model, adapter, output_dir)
    print(f"merged {adapter} into {base_model}: {output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: merge(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
