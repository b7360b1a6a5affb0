"""The model card: README.md in the run folder after train.py, updated by run_test.py; its front matter and figures
are the run's own, and its transformers snippet gives predict.py's probabilities."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import ONE_PROCESS_FLAGS

import run_test
from tuning.eval.model_card import CARD_NAME, base_model_name, front_matter, write_model_card
from tuning.eval.predicting import Classifier
from tuning.runtime.devices import detect_device
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import read_json
from tuning.train.run import main as train_main


def _train(base, data_dir, run, *flags: str) -> None:
    code = train_main([
        *ONE_PROCESS_FLAGS, "--model_name_or_path", str(base), "--train_data", str(data_dir / "train.jsonl"),
        "--eval_data", str(data_dir / "eval.jsonl"), "--eval_strategy", "steps", "--eval_steps", "4",
        "--output_dir", str(run), "--per_device_train_batch_size", "8", "--model_max_length", "64",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", *flags,
    ])
    assert code == 0


@pytest.fixture(scope="module")
def runs(make_review_data, make_tiny_base, tmp_path_factory) -> dict:
    """A full and a LoRA run of train.py on the same tiny base and reviews."""
    data_dir = make_review_data(train_per_label=16, eval_per_label=8)
    base = make_tiny_base(data_dir, vocab_size=1000)
    root = tmp_path_factory.mktemp("model_card")
    _train(base, data_dir, root / "full", "--max_steps", "8", "--learning_rate", "3e-3")
    _train(base, data_dir, root / "lora", "--max_steps", "2", "--use_lora", "true", "--learning_rate", "1e-3")
    return {"base": base, "data": data_dir, "full": root / "full", "lora": root / "lora"}


def split_card(path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "the card starts with YAML front matter between --- lines"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_training_writes_the_card(runs):
    metadata, body = split_card(runs["full"] / CARD_NAME)
    assert metadata == {
        "base_model": runs["base"].name, "library_name": "transformers", "pipeline_tag": "text-generation",
        "language": "zh", "datasets": ["waimai_10k"],
        "tags": ["baichuan2", "sentiment-analysis", "text-classification", "waimai_10k", "full-fine-tuning",
                 "deepspeed"],
    }  # no metrics before run_test
    summary = read_json(runs["full"] / "train_summary.json")
    assert "`bash run_test.sh` adds it here" in body
    assert f"ended at {100 * summary['eval_accuracy']:.2f}% accuracy" in body
    assert "| steps | 8 (" in body and "![training curves](training_curves.png)" in body
    state = read_json(runs["full"] / "trainer_state.json")
    points = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
    assert len(points) == 2
    for entry in points:
        assert f"| {entry['step']} | {entry['epoch']:.2f} | {entry['eval_loss']:.4f} | " in body


def test_run_test_adds_its_results_and_the_figures_equal_eval_results_json(runs, capsys):
    code = run_test.main(["--base_model", str(runs["base"]), "--train_output_dir", str(runs["full"]),
                          "--eval_data", str(runs["data"] / "eval.jsonl"), "--num_examples", "2",
                          "--max_new_tokens", "2", "--batch_size", "8"])
    assert code == 0
    assert f"{runs['full'] / CARD_NAME}" in capsys.readouterr().out
    results = read_json(runs["full"] / "eval" / "eval_results.json")
    metadata, body = split_card(runs["full"] / CARD_NAME)
    assert metadata["metrics"] == ["accuracy", "f1"]
    (entry,) = metadata["model-index"]
    (result,) = entry["results"]
    assert entry["name"] == "full" and result["dataset"]["split"] == "eval"
    tuned = results["models"]["tuned"]["scoring"]
    assert {metric["type"]: metric["value"] for metric in result["metrics"]} == {
        "accuracy": tuned["accuracy"], "f1": tuned["macro_f1"]}
    row = next(line for line in body.splitlines() if line.startswith("| label scoring: accuracy |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:] == [f"{100 * results['models'][name]['scoring']['accuracy']:.2f}%" for name in ("base", "tuned")]
    confusion = tuned["confusion_matrix"]
    for word, counts in zip(confusion["rows"], confusion["counts"]):
        assert f"| {word} | {' | '.join(map(str, counts[:2]))} |" in body
    assert "![confusion matrices](eval/confusion_matrix.png)" in body


def test_the_cards_transformers_snippet_gives_predict_pys_probabilities(runs):
    """Run as the card shows it, in a process that never imports this project, from the folder's parent."""
    _, body = split_card(runs["full"] / CARD_NAME)
    snippet = re.findall(r"```python\n(.*?)```", body, re.S)[-1]
    assert "trust_remote_code=True" in snippet and 'model_dir = "full"' in snippet
    review = "送餐很快，饭菜还是热的，好评"
    script = snippet.replace(f'print(classify("{review}"))', f"print(json.dumps(classify({review!r})))")
    script = "import json\n" + script + "import sys\nassert 'tuning' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=runs["full"].parent, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    probabilities = json.loads(result.stdout.strip().splitlines()[-1])
    classifier = Classifier.load(runs["full"], detect_device(), torch.float32)
    expected = classifier.classify([review]).probabilities[0].tolist()
    assert list(probabilities.values()) == pytest.approx(expected, abs=1e-5)
    assert list(probabilities) == list(classifier.prompt_format.label_words)


def test_a_lora_runs_card_names_the_adapter(runs):
    metadata, body = split_card(runs["lora"] / CARD_NAME)
    assert "lora" in metadata["tags"] and "full-fine-tuning" not in metadata["tags"]
    assert "with LoRA (merged into the full model)" in body and "the adapter alone is in `adapter/`" in body
    summary = read_json(runs["lora"] / "train_summary.json")
    assert f"| trainable parameters | {summary['trainable_parameters']:,} of {summary['total_parameters']:,} |" in body


def test_the_official_base_is_named_by_its_hub_id():
    manifest = {"model": "/data/models/Baichuan2-7B-Base"}
    assert base_model_name(manifest) == "baichuan-inc/Baichuan2-7B-Base"
    run_config = {"lora": {"use_lora": False}}
    metadata = front_matter(Path("run"), manifest, run_config, None)
    assert metadata["license"] == "other" and metadata["license_name"] == "baichuan2-community-license"
    assert base_model_name({"model": "/tmp/tiny-base"}) == "tiny-base"


def test_the_card_is_replaced_whole_or_not_at_all(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    before = (run / CARD_NAME).read_text(encoding="utf-8")
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "eval_results.json").write_text('{"models": ', encoding="utf-8")
    with pytest.raises(DataError, match="eval_results.json"):
        write_model_card(run)
    assert (run / CARD_NAME).read_text(encoding="utf-8") == before
    assert sorted(path.name for path in run.iterdir() if path.name.endswith(".tmp")) == []


def test_no_card_where_there_is_no_final_model(runs, tmp_path):
    shutil.copytree(runs["full"], tmp_path / "run", ignore=shutil.ignore_patterns("model.safetensors", CARD_NAME))
    assert write_model_card(tmp_path / "run") == []
    assert not (tmp_path / "run" / CARD_NAME).exists()
