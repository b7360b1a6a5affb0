"""run_test's outputs: the results JSON, the Markdown report, the confusion-matrix PNG and the console tables."""

import io
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from rich.table import Table

from tuning.eval.evaluate import EvalSettings, ModelEvaluation
from tuning.run_layout import CONFIG_NAME
from tuning.runtime.fileio import atomic_writers, dump_json

RESULTS_JSON = "eval_results.json"
REPORT_MD = "eval_report.md"
CONFUSION_PNG = "confusion_matrix.png"
MODEL_TITLES = {"base": "base (zero-shot)", "tuned": "tuned"}
POSITION_NAMES = ("positive", "negative")  # stand-ins for two label words (positive first) no font can draw
PLACEHOLDER_FONTS = ("Last Resort",)  # fonts that map every character to a placeholder box


def results_payload(
    eval_data: str,
    reviews: list[str],
    evaluations: dict[str, ModelEvaluation],
    settings: EvalSettings,
    setting_sources: dict[str, str],
    training_config: Path | None,
    device_kind: str,
    dtype_name: str,
) -> dict:
    """Everything eval_results.json holds (`reviews`: the first eval reviews, shown as examples).

    `setting_sources`: where each prompt setting came from (see evaluation.prompt_settings); `training_config`:
    the tuned model's run_config.json, if any.
    """
    first = next(iter(evaluations.values()))
    label_words, gold = first.label_words, first.gold
    label_counts = Counter(gold)
    majority_label, majority_count = label_counts.most_common(1)[0]
    return {
        "eval_data": eval_data,
        "num_samples": len(gold),
        "label_words": list(label_words),
        "label_counts": {word: label_counts[word] for word in label_words},
        "majority_baseline": {"label": majority_label, "accuracy": majority_count / len(gold)},
        "device": device_kind,
        "dtype": dtype_name,
        "settings": asdict(settings),
        "setting_sources": setting_sources,
        "training_config": None if training_config is None else str(training_config),
        "models": {
            name: {
                "path": evaluation.model_dir,
                "truncated_prompts": evaluation.truncated_prompts,
                "scoring": evaluation.scoring,
                "generation": evaluation.generation,
            }
            for name, evaluation in evaluations.items()
        },
        "examples": [
            {"review": review, "label": gold[index]}
            | {name: evaluation.answers[index] for name, evaluation in evaluations.items()}
            for index, review in enumerate(reviews)
        ],
    }


def prompt_line(settings: dict, setting_sources: dict[str, str], training_config: str | Path | None) -> str:
    """The prompt settings both models are evaluated with and where each came from, as one line of text."""
    shown = {
        "prompt_template": f"template {settings['prompt_template']!r}",
        "label_words": f"label words {settings['label_words']}",
        "model_max_length": f"model_max_length {settings['model_max_length']}",
    }
    line = ", ".join(f"{text} ({setting_sources[key]})" for key, text in shown.items())
    if training_config is None:
        return line + f"; no {CONFIG_NAME} beside the tuned model"
    return line + f"; training run settings read from {training_config}"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def summary_rows(payload: dict) -> list[list[str]]:
    """Metric name, then one value per model: the rows of the console summary and of the Markdown table."""
    models = payload["models"].values()
    rows = [
        ["label scoring: accuracy", *(_percent(m["scoring"]["accuracy"]) for m in models)],
        ["label scoring: macro-F1", *(f"{m['scoring']['macro_f1']:.4f}" for m in models)],
    ]
    for word in payload["label_words"]:
        rows.append(
            [f"label scoring: {word} precision / recall / F1"]
            + [
                " / ".join(f"{m['scoring']['per_class'][word][key]:.3f}" for key in ("precision", "recall", "f1"))
                for m in models
            ]
        )
    rows += [
        ["label scoring: reviews/s", *(f"{m['scoring']['reviews_per_s']:.1f}" for m in models)],
        ["generation: answer is a label word", *(_percent(m["generation"]["parse_rate"]) for m in models)],
        ["generation: accuracy (unparsed = wrong)",
         *(_percent(m["generation"]["metrics"]["accuracy"]) for m in models)],
        ["generation: reviews/s", *(f"{m['generation']['reviews_per_s']:.1f}" for m in models)],
        ["reviews cut to --model_max_length", *(str(m["truncated_prompts"]) for m in models)],
    ]
    return rows


def examples_table(payload: dict) -> Table:
    """The original run_test table: review, gold label, base answer, tuned answer."""
    table = Table(title=f"{len(payload['examples'])} eval reviews, greedy answers", show_lines=True)
    table.add_column("review", ratio=3, overflow="fold")
    table.add_column("label", no_wrap=True)
    for name in payload["models"]:
        table.add_column("tune" if name == "tuned" else name, ratio=1, overflow="fold")
    for example in payload["examples"]:
        table.add_row(example["review"], example["label"], *(example[name] for name in payload["models"]))
    return table


def summary_table(payload: dict) -> Table:
    majority = payload["majority_baseline"]
    table = Table(
        title=f"{payload['num_samples']} eval reviews (majority baseline: always {majority['label']} = "
        f"{_percent(majority['accuracy'])})"
    )
    table.add_column("metric")
    for name in payload["models"]:
        table.add_column(MODEL_TITLES.get(name, name), justify="right")
    for row in summary_rows(payload):
        table.add_row(*row)
    return table


def _shown_confusion(confusion: dict) -> tuple[list[str], list[list[int]]]:
    """Columns and counts of a confusion matrix, without the "other" column when nothing fell into it."""
    if any(row[-1] for row in confusion["counts"]):
        return confusion["columns"], confusion["counts"]
    return confusion["columns"][:-1], [row[:-1] for row in confusion["counts"]]


def _markdown_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_markdown_cell(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in rows]


def markdown_report(payload: dict) -> str:
    names = list(payload["models"])
    settings = payload["settings"]
    majority = payload["majority_baseline"]
    counts = ", ".join(f"{word} {count}" for word, count in payload["label_counts"].items())
    lines = [
        "# Base vs fine-tuned model on waimai_10k",
        "",
        f"Eval data `{payload['eval_data']}`: {payload['num_samples']} reviews ({counts}). "
        f"Device {payload['device']}, {payload['dtype']}; greedy generation of up to {settings['max_new_tokens']} "
        f"new tokens. Majority baseline (always {majority['label']}): {_percent(majority['accuracy'])}.",
        "",
        "Models: " + "; ".join(f"{name} `{model['path']}`" for name, model in payload["models"].items()) + ".",
        "",
        f"Prompt settings: {prompt_line(settings, payload['setting_sources'], payload['training_config'])}.",
        "",
        "## Examples",
        "",
        *markdown_table(
            ["review", "label", *("tune" if name == "tuned" else name for name in names)],
            [[ex["review"], ex["label"], *(ex[name] for name in names)] for ex in payload["examples"]],
        ),
        "",
        "## Metrics",
        "",
        "Label scoring compares the total log-probability of each label word after the prompt (for the base model",
        "this is its zero-shot accuracy); generation parses the greedy answer.",
        "",
        *markdown_table(["metric", *(MODEL_TITLES.get(name, name) for name in names)], summary_rows(payload)),
        "",
        "## Confusion matrices (rows: gold label, columns: prediction)",
        "",
    ]
    for name, model in payload["models"].items():
        for kind, metrics in (("label scoring", model["scoring"]), ("generation", model["generation"]["metrics"])):
            confusion = metrics["confusion_matrix"]
            columns, counts = _shown_confusion(confusion)
            lines += [f"{MODEL_TITLES.get(name, name)}, {kind}:", ""]
            lines += markdown_table(
                ["gold \\ predicted", *columns],
                [[word, *map(str, row)] for word, row in zip(confusion["rows"], counts)],
            )
            lines.append("")
    lines += [f"![confusion matrices]({CONFUSION_PNG})", ""]
    return "\n".join(lines)


def _font_covering(text: str) -> str | None:
    """Name of an installed font that has a glyph for every character of `text`."""
    needed = {ord(character) for character in text}
    for entry in font_manager.fontManager.ttflist:
        if entry.name.startswith(PLACEHOLDER_FONTS):
            continue
        try:
            charmap = FT2Font(entry.fname).get_charmap()
        except (OSError, RuntimeError):
            continue
        if needed <= charmap.keys():
            return entry.name
    return None


def _tick_names(words: list[str], font: str | None, label_words: list[str]) -> list[str]:
    """Label words as tick labels; when no installed font can draw them, ASCII stand-ins by position."""
    if font:
        return words
    stand_ins = POSITION_NAMES if len(label_words) == len(POSITION_NAMES) else None
    names = {
        word: word if word.isascii() else stand_ins[index] if stand_ins else f"label {index + 1}"
        for index, word in enumerate(label_words)
    }
    return [names.get(word, word) for word in words]


def draw_confusion_matrices(payload: dict, handle) -> None:
    """One panel per model and method (label scoring, generation), counts written in the cells; PNG to `handle`."""
    panels = [
        (f"{MODEL_TITLES.get(name, name)}: {kind}", metrics["confusion_matrix"])
        for name, model in payload["models"].items()
        for kind, metrics in (("label scoring", model["scoring"]), ("generation", model["generation"]["metrics"]))
    ]
    font = _font_covering("".join(payload["label_words"]))
    figure = Figure(figsize=(9, 4 * len(payload["models"])))
    axes = figure.subplots(len(payload["models"]), 2, squeeze=False)
    for axis, (title, confusion) in zip(axes.flat, panels):
        columns, counts = _shown_confusion(confusion)
        row_names = _tick_names(confusion["rows"], font, payload["label_words"])
        column_names = _tick_names(columns, font, payload["label_words"])
        axis.imshow(counts, cmap="Blues", vmin=0)
        axis.set_title(title)
        axis.set_xticks(range(len(column_names)), column_names, fontfamily=font)
        axis.set_yticks(range(len(row_names)), row_names, fontfamily=font)
        axis.set_xlabel("predicted")
        axis.set_ylabel("gold")
        peak = max(max(row) for row in counts) or 1
        for row_index, row in enumerate(counts):
            for column_index, count in enumerate(row):
                color = "white" if count > peak / 2 else "black"
                axis.text(column_index, row_index, str(count), ha="center", va="center", color=color)
    figure.tight_layout()
    figure.savefig(handle, format="png", dpi=120)


def write_outputs(output_dir: str | Path, payload: dict) -> list[Path]:
    """eval_results.json, eval_report.md and confusion_matrix.png: all replaced together, or none of them."""
    output_dir = Path(output_dir)
    paths = [output_dir / RESULTS_JSON, output_dir / REPORT_MD, output_dir / CONFUSION_PNG]
    results, figure = io.StringIO(), io.BytesIO()
    dump_json(payload, results)
    draw_confusion_matrices(payload, figure)
    contents = [results.getvalue().encode("utf-8"), markdown_report(payload).encode("utf-8"), figure.getvalue()]
    with atomic_writers(paths, mode="wb") as handles:
        for handle, content in zip(handles, contents):
            handle.write(content)
    return paths
