"""The model card: README.md in a training run's folder, in the Hugging Face format, so the folder can be shared as is.

It is written from the run folder's own files: run_config.json, run_manifest.json, train_summary.json,
trainer_state.json (the evaluation points of the training curve) and, after run_test.sh, eval/eval_results.json.
train.py writes it when training ends, run_test.py rewrites it with the evaluation;
`python -m tuning.eval.model_card RUN_DIR` writes it again.
"""

import argparse
import sys
from pathlib import Path

import yaml

from tuning.eval.report import CONFUSION_PNG, MODEL_TITLES, REPORT_MD, RESULTS_JSON, markdown_table, summary_rows
from tuning.model.files import missing_model_files
from tuning.run_layout import ADAPTER_DIR, CONFIG_NAME, CURVES_NAME, EVAL_DIR, MANIFEST_NAME, SUMMARY_NAME
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import atomic_writer, read_json
from tuning.runtime.paths import REPO_ROOT

CARD_NAME = "README.md"
OFFICIAL_BASES = ("Baichuan2-7B-Base", "Baichuan2-7B-Chat", "Baichuan2-13B-Base", "Baichuan2-13B-Chat")
HUB_ORGANIZATION = "baichuan-inc"
DATASET = "waimai_10k"
DATASET_SOURCE = "https://github.com/SophonPlus/ChineseNlpCorpus"
EXAMPLE_REVIEW = "送餐很快，饭菜还是热的，好评"


def base_model_name(manifest: dict) -> str:
    """The base model as a hub id for the official Baichuan2 releases, else its folder's name (the tiny demo's)."""
    name = Path(manifest["model"]).name
    official = {release.lower(): release for release in OFFICIAL_BASES}
    return f"{HUB_ORGANIZATION}/{official[name.lower()]}" if name.lower() in official else name


def _shown(run_dir: Path) -> str:
    """The folder as the card's commands name it: relative to the repository when inside it."""
    resolved = run_dir.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else run_dir.name


def front_matter(run_dir: Path, manifest: dict, run_config: dict, results: dict | None) -> dict:
    """The card's YAML metadata; metrics and model-index from run_test's results when there are any."""
    base = base_model_name(manifest)
    lora = run_config["lora"]["use_lora"]
    metadata = {
        "base_model": base,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "language": "zh",
        "datasets": [DATASET],
        "tags": ["baichuan2", "sentiment-analysis", "text-classification", DATASET,
                 "lora" if lora else "full-fine-tuning", "deepspeed"],
    }
    if base.startswith(HUB_ORGANIZATION + "/"):
        metadata |= {"license": "other", "license_name": "baichuan2-community-license"}
    if results is None:
        return metadata
    scoring = results["models"]["tuned"]["scoring"]
    metadata["metrics"] = ["accuracy", "f1"]
    metadata["model-index"] = [{
        "name": run_dir.name,
        "results": [{
            "task": {"type": "text-classification", "name": "Sentiment classification (label scoring)"},
            "dataset": {"name": f"{DATASET} eval split ({results['num_samples']} reviews)", "type": DATASET,
                        "split": "eval"},
            "metrics": [
                {"type": "accuracy", "value": scoring["accuracy"], "name": "label-scoring accuracy"},
                {"type": "f1", "value": scoring["macro_f1"], "name": "macro-F1", "args": {"average": "macro"}},
            ],
        }],
    }]
    return metadata


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def results_section(results: dict | None, summary: dict) -> list[str]:
    """run_test's comparison: the metrics table and the tuned model's confusion matrix; a pointer when not run."""
    if results is None:
        accuracy = summary.get("eval_accuracy")
        during = f" The evaluation during training ended at {_percent(accuracy)} accuracy." if accuracy else ""
        return ["## Results", "", f"Not compared with the base model yet: `bash run_test.sh` adds it here.{during}",
                ""]
    names = list(results["models"])
    majority = results["majority_baseline"]
    tuned = results["models"]["tuned"]
    confusion = tuned["scoring"]["confusion_matrix"]
    columns, counts = confusion["columns"], confusion["counts"]
    if not any(row[-1] for row in counts):  # no "other" answers: label scoring always picks a label word
        columns, counts = columns[:-1], [row[:-1] for row in counts]
    return [
        "## Results",
        "",
        f"`run_test.py` on the {results['num_samples']} eval reviews of `{results['eval_data']}` "
        f"({results['device']}, {results['dtype']}); tuned model `{tuned['path']}`. Label scoring picks the label "
        "word with the highest log-probability after the prompt (for the base model, its zero-shot accuracy); "
        f"generation parses the greedy answer. Majority baseline (always {majority['label']}): "
        f"{_percent(majority['accuracy'])}.",
        "",
        *markdown_table(["metric", *(MODEL_TITLES.get(name, name) for name in names)], summary_rows(results)),
        "",
        "Confusion matrix of the tuned model, label scoring (rows: gold label, columns: prediction):",
        "",
        *markdown_table(["gold \\ predicted", *columns],
                         [[word, *map(str, row)] for word, row in zip(confusion["rows"], counts)]),
        "",
        f"![confusion matrices]({EVAL_DIR}/{CONFUSION_PNG})",
        "",
        f"The whole comparison: [{EVAL_DIR}/{REPORT_MD}]({EVAL_DIR}/{REPORT_MD}).",
        "",
    ]


def training_section(manifest: dict, run_config: dict, summary: dict, log_history: list[dict]) -> list[str]:
    """The recipe's key settings, and the training curve (its picture and its evaluation points)."""
    data, lora, training = run_config["data"], run_config["lora"], run_config["training"]
    method = "full fine-tuning (every parameter)"
    if lora["use_lora"]:
        method = (f"LoRA rank {lora['lora_rank']}, alpha {lora['lora_alpha']}, dropout {lora['lora_dropout']} on "
                  f"{lora['lora_target']}; merged into the base weights (the adapter alone is in `{ADAPTER_DIR}/`)")
    zero = manifest.get("zero_stage")
    settings = [
        ["recipe", f"`{run_config['recipe']}`"],
        ["base model", f"`{base_model_name(manifest)}`"],
        ["method", method],
        ["trainable parameters", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,}"],
        ["prompt", f"`[user] + {data['prompt_template']!r} + [assistant]`, loss on the answer + eos only"],
        ["label words", ", ".join(data["label_words"].split(",")) + " (positive first)"],
        ["model_max_length", f"{data['model_max_length']} tokens (longer reviews cut, "
                             f"{summary['train_truncated']} in training)"],
        ["training reviews", f"{summary['train_samples']:,} (`{data['train_data']}`)"],
        ["global batch", f"{run_config['global_batch_size']} = {training['per_device_train_batch_size']} per "
                         f"device x {training['gradient_accumulation_steps']} accumulation x "
                         f"{run_config['processes']} processes"],
        ["optimizer", f"{training['optim']}, learning rate {training['learning_rate']:g}, "
                      f"{training['lr_scheduler_type']} schedule, warmup {training['warmup_steps']:g}, "
                      f"weight decay {training['weight_decay']:g}"],
        ["steps", f"{summary['global_step']} ({summary['epochs']:g} epoch{'' if summary['epochs'] == 1 else 's'})"],
        ["precision", f"{summary['precision']}"
                      + (f", DeepSpeed ZeRO-{zero}" if zero is not None else ", no DeepSpeed")
                      + (", gradient checkpointing" if training["gradient_checkpointing"] else "")],
        ["device", f"{summary['device']} x {summary['processes']}, {summary['wall_time_s']:.0f} s"],
    ]
    points = [entry for entry in log_history if "eval_accuracy" in entry]
    lines = [
        "## Training",
        "",
        *markdown_table(["setting", "value"], settings),
        "",
        "### Training curve",
        "",
        f"![training curves]({CURVES_NAME})",
        "",
    ]
    if points:
        lines += [
            "Evaluation during training (label scoring on the eval reviews):",
            "",
            *markdown_table(
                ["step", "epoch", "eval loss", "accuracy", "macro-F1"],
                [[str(entry["step"]), f"{entry['epoch']:.2f}", f"{entry['eval_loss']:.4f}",
                  _percent(entry["eval_accuracy"]), f"{entry.get('eval_macro_f1', float('nan')):.4f}"]
                 for entry in points],
            ),
            "",
        ]
    return lines


def usage_section(run_dir: Path, run_config: dict) -> list[str]:
    """predict.py, serve.py, this project's code, and transformers alone with the folder's own (remote) code."""
    shown = _shown(run_dir)
    data = run_config["data"]
    words = data["label_words"].split(",")
    return [
        "## How to use",
        "",
        "The answer is the label word with the highest log-probability after the training prompt (label scoring); "
        "its probability is the softmax over the label words' scores.",
        "",
        "With `predict.py` of the training repository (one JSON line per review):",
        "",
        "```bash",
        f'python predict.py --model {shown} "{EXAMPLE_REVIEW}"',
        "```",
        "",
        "As an HTTP service with a page to try it (`python serve.py --help`, docs/serve.md):",
        "",
        "```bash",
        f"python serve.py --model {shown}    # http://127.0.0.1:8000: the page; /docs: the API",
        "curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' \\",
        f"     -d '{{\"reviews\": [\"{EXAMPLE_REVIEW}\"]}}'",
        "```",
        "",
        "With the training repository's code (the prompt settings come from this folder's run_config.json):",
        "",
        "```python",
        "from pathlib import Path",
        "",
        "import torch",
        "",
        "from tuning.eval.predicting import Classifier",
        "from tuning.runtime.devices import detect_device",
        "",
        f'classifier = Classifier.load(Path("{shown}"), detect_device(), torch.float32)',
        f'print(classifier.classify(["{EXAMPLE_REVIEW}"]).records)',
        "```",
        "",
        "With transformers alone: the folder holds its model and tokenizer code (`modeling_baichuan.py`, ...), "
        "loaded with `trust_remote_code=True`. Reviews longer than the training run's "
        f"model_max_length ({data['model_max_length']} tokens) were cut in training; cut them the same way.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_dir = "{shown}"  # this folder',
        "tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)",
        "model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()",
        f"template, label_words = {data['prompt_template']!r}, {words!r}  # run_config.json",
        "",
        "",
        "@torch.no_grad()",
        "def classify(review: str) -> dict[str, float]:",
        '    """Each label word\'s probability: the softmax over the words\' log-probabilities after the prompt."""',
        "    body = tokenizer.encode(template.format(review=review), add_special_tokens=False)",
        "    prompt = [model.config.user_token_id, *body, model.config.assistant_token_id]",
        "    scores = []",
        "    for word in label_words:",
        "        answer = tokenizer.encode(word, add_special_tokens=False)",
        "        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].float()",
        "        scores.append(logits.log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).sum())",
        "    return dict(zip(label_words, torch.stack(scores).softmax(-1).tolist()))",
        "",
        "",
        f'print(classify("{EXAMPLE_REVIEW}"))',
        "```",
        "",
    ]


def model_card(run_dir: Path) -> str:
    """The card's text for a training run folder."""
    manifest = read_json(run_dir / MANIFEST_NAME)
    run_config = read_json(run_dir / CONFIG_NAME)
    summary = read_json(run_dir / SUMMARY_NAME)
    state_path = run_dir / "trainer_state.json"
    log_history = read_json(state_path).get("log_history", []) if state_path.is_file() else []
    results_path = run_dir / EVAL_DIR / RESULTS_JSON
    results = read_json(results_path) if results_path.is_file() else None
    lora = run_config["lora"]["use_lora"]
    base = base_model_name(manifest)
    metadata = yaml.safe_dump(front_matter(run_dir, manifest, run_config, results), allow_unicode=True,
                              sort_keys=False)
    lines = [
        "---",
        metadata.rstrip("\n"),
        "---",
        "",
        f"# {run_dir.name}",
        "",
        f"`{base}` fine-tuned {'with LoRA (merged into the full model)' if lora else 'in full'} to label Chinese "
        f"food-delivery reviews ({DATASET}, from [{DATASET_SOURCE.removeprefix('https://github.com/')}]"
        f"({DATASET_SOURCE})) "
        f"{' / '.join(run_config['data']['label_words'].split(','))} (positive / negative): the model answers the "
        "prompt with a label word. Weights in the official Baichuan2 layout, with the model and tokenizer code "
        "beside them.",
        "",
        *results_section(results, summary),
        *training_section(manifest, run_config, summary, log_history),
        *usage_section(run_dir, run_config),
    ]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> list[Path]:
    """README.md in a training run folder that holds its final model (written atomically); [] for any other folder."""
    run_dir = Path(run_dir)
    needed = (MANIFEST_NAME, CONFIG_NAME, SUMMARY_NAME)
    if missing_model_files(run_dir) or not all((run_dir / name).is_file() for name in needed):
        return []
    card = model_card(run_dir)
    with atomic_writer(run_dir / CARD_NAME) as handle:
        handle.write(card)
    return [run_dir / CARD_NAME]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.eval.model_card",
        description="Write README.md, the Hugging Face model card, in a training run's folder (train.py and "
                    "run_test.py do it themselves).",
    )
    parser.add_argument("run_dir", type=Path, help="a training output folder holding its final model")
    args = parser.parse_args(argv)

    def write() -> int:
        written = write_model_card(args.run_dir)
        if not written:
            raise DataError(f"{args.run_dir}: no final model with {MANIFEST_NAME}, {CONFIG_NAME} and {SUMMARY_NAME}")
        print(f"wrote {written[0]}")
        return 0

    return report_errors(write)


if __name__ == "__main__":
    sys.exit(main())
