"""Classify reviews with a fine-tuned model: one JSON line {"review", "label", "probability"} per review."""

import argparse
import sys
from pathlib import Path
from typing import IO

from tuning.eval.predicting import (
    Classifier,
    check_output_name,
    clean_reviews,
    find_model,
    read_input_file,
    read_stdin,
    write_predictions,
)
from tuning.model.baichuan import check_model_dir
from tuning.run_layout import default_run_dirs, use_lora_from_environment
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import compute_dtype, detect_device, prepare_device
from tuning.runtime.errors import DataError, report_errors


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
            "or GPU when there is one (bf16), else on the CPU (fp32)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("reviews", nargs="*", metavar="TEXT", help="reviews to classify")
    parser.add_argument("--model", type=Path, default=None,
                        help="a fine-tuned model folder, or a training output folder (its final model, else its "
                             "latest complete checkpoint-N); default: output/baichuan2-7b-waimai when it holds a "
                             "model, else the CPU demo's output/demo/tiny-tuned; with USE_LORA=true the merged "
                             "models in output/baichuan2-7b-waimai-lora, else output/demo/tiny-tuned-lora")
    parser.add_argument("--input", type=Path, default=None,
                        help="reviews in a file: .jsonl with a review field, .csv with a review column (UTF-8 or "
                             "GB18030), or .txt with one review per line; shows a progress bar on stderr")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the answers to this .jsonl or .csv file (UTF-8 with BOM) instead of stdout; "
                             "it is replaced only once every review is classified")
    parser.add_argument("--batch_size", type=whole_number(1), default=16,
                        help="reviews per forward pass (batches group reviews of similar length)")
    parser.add_argument("--fp32", action="store_true",
                        help="compute in fp32 even on an accelerator with native bf16")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, stdin: IO[bytes], stdout: IO[str]) -> int:
    if args.reviews and args.input:
        raise DataError("give reviews as arguments or with --input FILE, not both")
    if args.output:
        check_output_name(args.output)
    model_dir = check_model_dir(find_model(args.model, default_run_dirs(use_lora_from_environment())))
    if args.reviews:
        reviews = clean_reviews(args.reviews)
        if not reviews.texts:
            raise DataError(f"no reviews: the {reviews.empty} given are empty")
    elif args.input:
        reviews = read_input_file(args.input)
    else:
        if stdin.isatty():
            print("reading reviews from stdin, one per line; end with Ctrl-D", file=sys.stderr)
        reviews = read_stdin(stdin)
    device = detect_device()
    prepare_device(device)
    dtype = compute_dtype(device, want_bf16=not args.fp32)
    classifier = Classifier.load(model_dir, device, dtype, args.batch_size)
    shown = model_dir.relative_to(Path.cwd()) if model_dir.is_relative_to(Path.cwd()) else model_dir
    print(f"model {shown} ({device.kind}, {str(dtype).removeprefix('torch.')}), label words "
          f"{','.join(classifier.prompt_format.label_words)}: {len(reviews.texts)} reviews", file=sys.stderr)
    predictions = classifier.classify(reviews.texts, progress=args.input is not None)
    if reviews.empty:
        print(f"skipped {reviews.empty} empty reviews", file=sys.stderr)
    if predictions.truncated:
        print(f"cut {predictions.truncated} reviews longer than model_max_length {classifier.model_max_length}, "
              "as in training", file=sys.stderr)
    write_predictions(predictions.records, args.output, stdout)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: run(args, sys.stdin.buffer, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
