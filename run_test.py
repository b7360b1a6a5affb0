"""Compare the base and the fine-tuned Baichuan2 model on the waimai_10k eval reviews: example table and metrics."""

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from tuning.eval.evaluate import PROMPT_DEFAULTS, EvalSettings, evaluate_model, prompt_settings
from tuning.eval.model_card import write_model_card
from tuning.eval.report import examples_table, prompt_line, results_payload, summary_table, write_outputs
from tuning.model.baichuan import check_model_dir
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import compute_dtype, detect_device, prepare_device
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import read_jsonl
from tuning.runtime.paths import REPO_ROOT
from tuning.train.run_folder import lora_run, run_folder_of, tuned_model_in, use_lora_from_environment

DEFAULT_RUN = REPO_ROOT / "output" / "baichuan2-7b-waimai"  # where `bash ds_run_bf16.sh` trains the 7B


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
            "when there is one (bf16 where supported), else the CPU (fp32). Default paths are inside this "
            "repository, wherever you run it from; paths you pass are relative to the current directory."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--base_model", type=Path, default=REPO_ROOT / "models" / "Baichuan2-7B-Base",
                        help="folder of the base model (config.json, weights, tokenizer.model)")
    parser.add_argument("--tuned_model", type=Path, default=None,
                        help="folder of the fine-tuned model; default: the final model saved in --train_output_dir, "
                             "else its latest complete checkpoint-N")
    parser.add_argument("--train_output_dir", type=Path, default=None,
                        help="the training output folder where the default --tuned_model is looked up; default: "
                             f"{DEFAULT_RUN.relative_to(REPO_ROOT)}, or {lora_run(DEFAULT_RUN).relative_to(REPO_ROOT)} "
                             "(the merged model of a LoRA run) with USE_LORA=true")
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
                             f"{PROMPT_DEFAULTS['prompt_template']!r}")
    parser.add_argument("--label_words", default=None,
                        help="answer words, positive first, comma-separated, as train.py's --label_words (eval "
                             "labels 积极/消极 are mapped to them in order); default: the tuned model's training "
                             f"run, else {PROMPT_DEFAULTS['label_words']}")
    parser.add_argument("--model_max_length", type=whole_number(8), default=None,
                        help="most tokens of prompt + answer + eos, as train.py's --model_max_length: longer "
                             "reviews are cut exactly as in training; default: the tuned model's training run, "
                             f"else {PROMPT_DEFAULTS['model_max_length']}")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="folder for eval_results.json, eval_report.md and confusion_matrix.png; default: "
                             "eval/ in the tuned model's training run folder")
    parser.add_argument("--fp32", action="store_true",
                        help="compute in fp32 even on an accelerator with native bf16 (the CPU always uses fp32)")
    return parser.parse_args(argv)


def check_output_folder(folder: Path) -> None:
    """Fail before the long evaluation, not after it, when the results could not be written there."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"--output_dir {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise DataError(f"--output_dir {folder}: {existing} is not writable")


def run(args: argparse.Namespace, console: Console) -> list[Path]:
    """Evaluate both models, print the tables, write the result files; returns their paths."""
    shown = read_jsonl(args.eval_data, required_keys=("review",))[: args.max_samples][: args.num_examples]
    train_output_dir = args.train_output_dir or (lora_run(DEFAULT_RUN) if use_lora_from_environment() else DEFAULT_RUN)
    tuned_model = args.tuned_model or tuned_model_in(train_output_dir)
    model_dirs = {"base": check_model_dir(args.base_model), "tuned": check_model_dir(tuned_model)}
    prompt, sources, run_config = prompt_settings(
        {key: getattr(args, key) for key in PROMPT_DEFAULTS}, model_dirs["tuned"]
    )
    output_dir = args.output_dir or run_folder_of(model_dirs["tuned"]) / "eval"
    check_output_folder(output_dir)
    device = detect_device()
    prepare_device(device)
    dtype = compute_dtype(device, want_bf16=not args.fp32)
    dtype_name = str(dtype).removeprefix("torch.")
    settings = EvalSettings(args.batch_size, args.max_new_tokens, args.max_samples, **prompt)
    console.print("prompt settings: " + prompt_line(prompt, sources, run_config), markup=False, soft_wrap=True)
    evaluations = {}
    for name, model_dir in model_dirs.items():
        console.rule(f"{name} model: {model_dir} ({device.kind}, {dtype_name})")
        evaluations[name] = evaluation = evaluate_model(model_dir, args.eval_data, device, dtype, settings)
        console.print(
            f"{name}: label scoring {evaluation.scoring['reviews_per_s']:.1f} reviews/s, "
            f"generation {evaluation.generation['reviews_per_s']:.1f} reviews/s"
        )
    reviews = [record["review"] for record in shown]
    payload = results_payload(
        str(args.eval_data), reviews, evaluations, settings, sources, run_config, device.kind, dtype_name
    )
    console.print(examples_table(payload))
    console.print(summary_table(payload))
    return write_outputs(output_dir, payload) + write_model_card(run_folder_of(model_dirs["tuned"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()

    def compare() -> int:
        written = run(args, console)
        console.print("wrote " + ", ".join(str(path) for path in written), markup=False, soft_wrap=True)
        return 0

    return report_errors(compare)


if __name__ == "__main__":
    sys.exit(main())
