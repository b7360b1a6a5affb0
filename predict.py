"""Classify reviews with a fine-tuned model: one JSON line {"review", "label", "probability"} per review."""

import argparse
import sys
from pathlib import Path

from tuning.eval.flags import add_dtype_flag
from tuning.run_layout import default_run_dirs
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.errors import report_errors
from tuning.runtime.paths import REPO_ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Label food-delivery reviews with a fine-tuned model. Reviews come from the arguments, else from "
            "--input FILE, else from stdin (one per line). Prints one JSON line per review, "
            '{"review": ..., "label": ..., "probability": ...}, in input order; --output writes them to a file '
            "instead. The label is the label word with the highest log-probability after the prompt, exactly as "
            "run_test.py scores it, with the prompt template, label words and model_max_length recorded by the "
            "training run (run_config.json); probability is the softmax over the label words' scores. Empty "
            "reviews are skipped and longer ones cut as in training; both are counted on stderr. Runs on the NPU "
            "or GPU when there is one, else on the CPU, in the precision --dtype chooses. The output path, the "
            "model folder, the reviews and the memory the model needs are checked before any weight is read."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("reviews", nargs="*", metavar="TEXT", help="reviews to classify")
    runs, lora_runs = ([str(run.relative_to(REPO_ROOT)) for run in default_run_dirs(lora)] for lora in (False, True))
    parser.add_argument("--model", type=Path, default=None,
                        help="a fine-tuned model folder, or a training output folder (its final model, else its "
                             f"latest complete checkpoint-N); default: {runs[0]} when it holds a model, else the CPU "
                             f"demo's {runs[1]}; with USE_LORA=true the merged models in {lora_runs[0]}, else "
                             f"{lora_runs[1]}")
    parser.add_argument("--input", type=Path, default=None, dest="input_file", metavar="FILE",
                        help="reviews in a file: .jsonl with a review field, .csv with a review column (UTF-8 or "
                             "GB18030), or .txt with one review per line; shows the count and the "
                             "time left on stderr now and then")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write the answers to this .jsonl or .csv file (UTF-8 with BOM) instead of stdout; "
                             "it is replaced only once every review is classified, and never the --input file")
    parser.add_argument("--batch_size", type=whole_number(1), default=16,
                        help="reviews per forward pass (batches group reviews of similar length); cut, with a "
                             "note, to what fits in memory")
    add_dtype_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tuning.eval.predicting import predict  # torch and transformers load only once the flags are parsed

    return report_errors(lambda: predict(**vars(args), stdin=sys.stdin.buffer, stdout=sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
