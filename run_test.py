"""Compare the base and the fine-tuned Baichuan2 model on the waimai_10k eval reviews: example table and metrics."""

import argparse
import sys
from pathlib import Path

from rich.console import Console

from tuning.eval.flags import add_dtype_flag
from tuning.run_layout import run_defaults
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.errors import report_errors
from tuning.runtime.paths import REPO_ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare the base model with the fine-tuned one on the eval reviews (eval.jsonl from make_data.py). "
            "Prints a table of a few reviews with each model's greedy answer, then, over the whole eval file, "
            "the accuracy, per-class precision/recall/F1, macro-F1 and confusion matrix of label scoring (which "
            "label word, 积极 or 消极, gets the higher log-probability after the prompt; for the base model this "
            "is its zero-shot accuracy) and how often the generated answer is a label word. Both models get "
            "the prompts the tuned model was trained with: template, label words and --model_max_length come "
            "from the run_config.json train.py wrote beside it (or beside its checkpoint-N folder) unless "
            "given here. Writes "
            "eval_results.json, eval_report.md and confusion_matrix.png to --output_dir (default: eval/ in the "
            "tuned model's training run folder). Uses the NPU or GPU "
            "when there is one, else the CPU, in the precision --dtype chooses; the two models are loaded one at "
            "a time, and whether one fits in memory is checked before any weight is read. Default paths are inside this "
            "repository, wherever you run it from; paths you pass are relative to the current directory."
        ),
        formatter_class=HelpFormatter,
    )
    full_run, lora_run = run_defaults(), run_defaults(lora=True)
    default_recipe = full_run.recipe.relative_to(REPO_ROOT)
    parser.add_argument("--base_model", type=Path, default=full_run.base_model,
                        help="folder of the base model (config.json, weights, tokenizer.model)")
    parser.add_argument("--tuned_model", type=Path, default=None,
                        help="folder of the fine-tuned model; default: the final model saved in --train_output_dir, "
                             "else its latest complete checkpoint-N")
    parser.add_argument("--train_output_dir", type=Path, default=None,
                        help="the training output folder where the default --tuned_model is looked up; default: "
                             f"{full_run.output_dir.relative_to(REPO_ROOT)}, or "
                             f"{lora_run.output_dir.relative_to(REPO_ROOT)} (the merged model of a LoRA run) with "
                             "USE_LORA=true")
    parser.add_argument("--eval_data", type=Path, default=REPO_ROOT / "data" / "eval.jsonl",
                        help='eval reviews, one {"review": ..., "label": "积极"|"消极"} per line')
    parser.add_argument("--max_samples", type=whole_number(1), default=None,
                        help="evaluate only the first N eval reviews (default: all)")
    parser.add_argument("--num_examples", type=whole_number(0), default=5,
                        help="reviews shown in the example table (the first ones of the eval file)")
    parser.add_argument("--max_new_tokens", type=whole_number(1), default=5,
                        help="tokens each model generates per review (greedy)")
    parser.add_argument("--batch_size", type=whole_number(1), default=16,
                        help="reviews per forward pass, for label scoring and for generation")
    parser.add_argument("--prompt_template", default=None,
                        help="prompt text around the review, as train.py's --prompt_template (must contain "
                             "{review} once); default: the tuned model's training run, else "
                             f"{default_recipe}'s")
    parser.add_argument("--label_words", default=None,
                        help="answer words, positive first, comma-separated, as train.py's --label_words (eval "
                             "labels 积极/消极 are mapped to them in order); default: the tuned model's training "
                             f"run, else {default_recipe}'s")
    parser.add_argument("--model_max_length", type=whole_number(8), default=None,
                        help="most tokens of prompt + answer + eos, as train.py's --model_max_length: longer "
                             "reviews are cut exactly as in training; default: the tuned model's training run, "
                             f"else {default_recipe}'s")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="folder for eval_results.json, eval_report.md and confusion_matrix.png; default: "
                             "eval/ in the tuned model's training run folder")
    parser.add_argument("--other_base", action="store_true",
                        help="compare with a --base_model other than the one the tuned run was trained from (its "
                             "run_manifest.json); without it, another base is refused")
    add_dtype_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tuning.eval.comparison import compare  # torch and transformers load only once the flags are parsed

    return report_errors(lambda: compare(**vars(args), console=Console()))


if __name__ == "__main__":
    sys.exit(main())
