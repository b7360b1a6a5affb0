"""run_test.sh / run_test.py end to end on two tiny random Baichuan2 models, and their errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from tiny_models import write_sharded_bin

from run_test import main
from tuning.data.prompt import PromptFormat
from tuning.eval import evaluate
from tuning.eval.evaluate import PROMPT_SETTINGS
from tuning.model.baichuan import BaichuanConfig, load_model, load_tokenizer
from tuning.model.tiny import build_tiny_base
from tuning.runtime.fileio import write_json, write_jsonl
from tuning.runtime.paths import REPO_ROOT

REVIEWS = [
    ("送餐很快，味道也不错，下次还点", "积极"),
    ("包装很好，菜很新鲜，好评", "积极"),
    ("量大实惠，分量足，推荐", "积极"),
    ("服务态度好，准时送达", "积极"),
    ("很好吃，孩子特别喜欢", "积极"),
    ("等了两个小时才送到，饭都凉了", "消极"),
    ("太咸了，根本没法吃", "消极"),
    ("少送了一份米饭，打电话也不理", "消极"),
    ("难吃，再也不点了", "消极"),
    ("菜里有头发，恶心 | 差评", "消极"),
    ("一般般吧，价格有点贵", "消极"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A base model folder, a training output folder whose only complete checkpoint is the tuned model, eval data."""
    root = tmp_path_factory.mktemp("run_test")
    eval_data = root / "eval.jsonl"
    write_jsonl(eval_data, [{"review": review, "label": label} for review, label in REVIEWS])
    build_tiny_base(eval_data, root / "base", vocab_size=1000, seed=0)
    train_output_dir = root / "train_output"
    build_tiny_base(eval_data, train_output_dir / "checkpoint-3", vocab_size=1000, seed=1)
    (train_output_dir / "checkpoint-3" / "trainer_state.json").write_text("{}", encoding="utf-8")
    (train_output_dir / "checkpoint-9").mkdir()  # an interrupted save: no weights, no trainer_state.json
    return {"root": root, "eval_data": eval_data, "base": root / "base", "train_output_dir": train_output_dir}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_test.py"), *args], capture_output=True, text=True, timeout=300
    )


def run_shell_demo(demo: dict, base_model: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    """`bash run_test.sh` with DEMO=1, so that it compares the demo models named by the environment."""
    env = {name: value for name, value in os.environ.items() if name != "MODEL"} | variables | {
        "DEMO": "1",
        "DEMO_BASE_MODEL": str(base_model),
        "DEMO_OUTPUT_DIR": str(demo["train_output_dir"]),
        "EVAL_DATA": str(demo["eval_data"]),
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", str(REPO_ROOT / "run_test.sh"), *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_end_to_end_table_metrics_and_files(demo):
    output_dir = demo["root"] / "outputs"
    result = run_shell_demo(
        demo, demo["base"], "--output_dir", str(output_dir), "--num_examples", "3", "--batch_size", "4",
        "--max_new_tokens", "4",
    )
    assert result.returncode == 0, result.stderr
    assert "running the tiny demo instead" in result.stdout
    for header in ("review", "label", "base", "tune", "label scoring: accuracy", "reviews/s"):
        assert header in result.stdout
    assert REVIEWS[0][0] in result.stdout

    payload = json.loads((output_dir / "eval_results.json").read_text(encoding="utf-8"))
    assert payload["num_samples"] == len(REVIEWS)
    assert payload["label_counts"] == {"积极": 5, "消极": 6}
    assert payload["majority_baseline"] == {"label": "消极", "accuracy": pytest.approx(6 / 11)}
    assert set(payload["models"]) == {"base", "tuned"}
    assert payload["models"]["tuned"]["path"] == str(demo["train_output_dir"] / "checkpoint-3")
    for model in payload["models"].values():
        scoring, generation = model["scoring"], model["generation"]
        assert 0 <= scoring["accuracy"] <= 1 and 0 <= generation["parse_rate"] <= 1
        assert scoring["reviews_per_s"] > 0 and generation["reviews_per_s"] > 0
        assert set(scoring["per_class"]) == {"积极", "消极"}
        assert sum(map(sum, scoring["confusion_matrix"]["counts"])) == len(REVIEWS)
        assert scoring["num_other"] == 0  # label scoring always picks a label word
        assert sum(map(sum, generation["metrics"]["confusion_matrix"]["counts"])) == len(REVIEWS)
    assert payload["training_config"] is None  # no run_config.json: train.py's defaults
    assert {key: payload["settings"][key] for key in PROMPT_SETTINGS} == {
        "prompt_template": "{review} -> ", "label_words": "积极,消极", "model_max_length": 1024
    }
    assert set(payload["setting_sources"].values()) == {"default"}
    assert "no run_config.json beside the tuned model" in " ".join(result.stdout.split())
    assert [example["review"] for example in payload["examples"]] == [review for review, _ in REVIEWS[:3]]
    assert all(set(example) == {"review", "label", "base", "tuned"} for example in payload["examples"])

    report = (output_dir / "eval_report.md").read_text(encoding="utf-8")
    assert "| review | label | base | tune |" in report and "![confusion matrices](confusion_matrix.png)" in report
    assert "Prompt settings: template '{review} -> ' (default), label words 积极,消极 (default)" in report
    assert (output_dir / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list(output_dir.glob(".*.tmp"))


def test_shell_without_demo_model_says_to_train_first(demo):
    result = run_shell_demo(demo, demo["root"] / "no-demo-model")
    assert_one_line_error(result, "no demo model", "ds_run_bf16.sh")


def test_shell_help_shows_both_usages_and_evaluates_nothing(demo):
    result = run_shell_demo(demo, demo["root"] / "no-demo-model", "--help")
    assert result.returncode == 0
    assert "bash run_test.sh --max_samples 200" in result.stdout
    assert "--prompt_template" in result.stdout
    assert "No Baichuan2 model" not in result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]
    assert [line for line in lines if line.startswith("error")] == [lines[-1]]


def test_missing_base_model_folder_is_a_clear_error(demo):
    missing = demo["root"] / "no-such-model"
    result = run_script("--base_model", str(missing), "--train_output_dir", str(demo["train_output_dir"]),
                        "--eval_data", str(demo["eval_data"]), "--output_dir", str(demo["root"] / "unused"))
    assert_one_line_error(result, str(missing), "no such folder")
    assert not (demo["root"] / "unused").exists()


def test_training_output_without_model_is_a_clear_error(demo):
    empty = demo["root"] / "empty_train_output"
    empty.mkdir(exist_ok=True)
    result = run_script("--base_model", str(demo["base"]), "--train_output_dir", str(empty),
                        "--eval_data", str(demo["eval_data"]), "--output_dir", str(demo["root"] / "unused"))
    assert_one_line_error(result, str(empty), "no final model", "bash ds_run_bf16.sh")


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"review": "好吃", "label": "积极"}', '{"review": "难吃", "label": 0}'],
         "{path}:2: label 0 is not one of 积极, 消极"),
        (['{"review": "", "label": "积极"}'], "{path}:1: review must be a non-empty string"),
        (['{"review": "好吃"}'], "{path}:1: missing key(s) label"),
    ],
)
def test_bad_eval_data_is_named(demo, tmp_path, capsys, lines, message):
    eval_data = tmp_path / "eval.jsonl"
    eval_data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["--base_model", str(demo["base"]), "--train_output_dir", str(demo["train_output_dir"]),
                 "--eval_data", str(eval_data), "--output_dir", str(tmp_path / "outputs")])
    assert code == 2
    assert not (tmp_path / "outputs").exists()
    assert capsys.readouterr().err.strip() == "error: " + message.format(path=eval_data)


def test_incomplete_tuned_model_is_named(demo, capsys):
    incomplete = demo["train_output_dir"] / "checkpoint-9"
    code = main(["--base_model", str(demo["base"]), "--tuned_model", str(incomplete),
                 "--eval_data", str(demo["eval_data"]), "--output_dir", str(demo["root"] / "unused")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: model folder {incomplete} is missing or incomplete: config.json, "
        "weights (model.safetensors, pytorch_model.bin or a sharded index)"
    )


def test_unwritable_output_dir_fails_before_evaluation(demo, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    code = main(["--base_model", str(demo["base"]), "--train_output_dir", str(demo["train_output_dir"]),
                 "--eval_data", str(demo["eval_data"]), "--output_dir", str(blocker / "outputs")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: --output_dir {blocker / 'outputs'}: {blocker} is not a folder"


LONG_TEMPLATE = "以下是一条外卖平台上的用户评论，请判断这位顾客的情感倾向。评论：{review} -> "


@pytest.fixture
def run_with_manifest(demo, tmp_path) -> Path:
    """A training output folder like train.py's: checkpoint-3 plus a run_config.json with non-default prompts.

    Its model_max_length is the longest eval example with the default template, so only another template cuts.
    """
    tokenizer = load_tokenizer(demo["base"])
    prompt_format = PromptFormat.from_config(BaichuanConfig.from_pretrained(demo["base"]))
    longest = max(
        len(prompt_format.encode_example(tokenizer, review, word, max_length=10_000).input_ids)
        for review, _ in REVIEWS
        for word in ("好评", "差评", "good", "bad")
    )
    folder = tmp_path / "train_output"
    shutil.copytree(demo["train_output_dir"] / "checkpoint-3", folder / "checkpoint-3")
    write_json(folder / "run_config.json", {"data": {"prompt_template": LONG_TEMPLATE, "label_words": "好评,差评",
                                                     "model_max_length": longest}})
    return folder


def _compare(demo, train_output_dir: Path, output_dir: Path, *flags: str) -> dict:
    code = main(["--base_model", str(demo["base"]), "--train_output_dir", str(train_output_dir),
                 "--eval_data", str(demo["eval_data"]), "--output_dir", str(output_dir), "--num_examples", "1",
                 "--max_new_tokens", "2", *flags])
    assert code == 0
    return json.loads((output_dir / "eval_results.json").read_text(encoding="utf-8"))


def test_both_models_get_the_prompts_the_tuned_model_was_trained_with(demo, run_with_manifest, tmp_path, capsys):
    payload = _compare(demo, run_with_manifest, tmp_path / "outputs")
    manifest = run_with_manifest / "run_config.json"
    assert payload["training_config"] == str(manifest)
    assert payload["settings"]["prompt_template"] == LONG_TEMPLATE
    assert payload["setting_sources"] == dict.fromkeys(PROMPT_SETTINGS, "training run")
    assert payload["label_words"] == ["好评", "差评"]  # the eval file's 积极/消极, mapped in order
    assert payload["label_counts"] == {"好评": 5, "差评": 6} and payload["examples"][0]["label"] == "好评"
    for model in payload["models"].values():
        assert set(model["scoring"]["per_class"]) == {"好评", "差评"}
        assert model["truncated_prompts"] > 0  # the long template no longer fits the run's model_max_length
    printed = " ".join(capsys.readouterr().out.split())
    assert f"prompt settings: template {LONG_TEMPLATE!r} (training run), label words 好评,差评 (training run)" in printed
    assert f"training run settings read from {manifest}" in printed


def test_flags_override_the_training_run(demo, run_with_manifest, tmp_path):
    payload = _compare(demo, run_with_manifest, tmp_path / "outputs", "--prompt_template", "{review} -> ",
                       "--label_words", "good, bad")
    assert payload["setting_sources"] == {"prompt_template": "command line", "label_words": "command line",
                                          "model_max_length": "training run"}
    assert payload["label_words"] == ["good", "bad"] and payload["label_counts"] == {"good": 5, "bad": 6}
    assert all(model["truncated_prompts"] == 0 for model in payload["models"].values())


@pytest.mark.parametrize(
    "flags, manifest_text, message",
    [
        (("--label_words", "积极"), '{"data": {}}', "--label_words '积极': give two or more different, non-empty words"),
        (("--prompt_template", "no review"), '{"data": {}}',
         "--prompt_template: prompt template must contain '{review}' once: 'no review'"),
        ((), '{"data": {"label_words": "积极,消极",', "{manifest}: not valid JSON (Expecting"),
        ((), '{"data": {"model_max_length": "256"}}', "{manifest}: model_max_length '256' is not a whole number"),
    ],
)
def test_bad_prompt_settings_are_named(demo, tmp_path, capsys, flags, manifest_text, message):
    train_output_dir = tmp_path / "train_output"
    shutil.copytree(demo["train_output_dir"] / "checkpoint-3", train_output_dir / "checkpoint-3")
    manifest = train_output_dir / "run_config.json"
    manifest.write_text(manifest_text, encoding="utf-8")
    code = main(["--base_model", str(demo["base"]), "--train_output_dir", str(train_output_dir),
                 "--eval_data", str(demo["eval_data"]), "--output_dir", str(tmp_path / "outputs"), *flags])
    assert code == 2
    assert not (tmp_path / "outputs").exists()
    assert capsys.readouterr().err.strip().startswith("error: " + message.replace("{manifest}", str(manifest)))


def test_dtype_variable_sets_the_precision(demo):
    output_dir = demo["root"] / "bf16-outputs"
    result = run_shell_demo(demo, demo["base"], "--output_dir", str(output_dir), "--num_examples", "1",
                            "--max_new_tokens", "1", DTYPE="bf16")
    assert result.returncode == 0, result.stderr
    assert json.loads((output_dir / "eval_results.json").read_text(encoding="utf-8"))["dtype"] == "bfloat16"


@pytest.fixture
def run_trained_from(demo, tmp_path):
    """`run_trained_from(base)`: a training output folder whose run_manifest.json records `base` as its base model."""
    def make(base: Path) -> Path:
        folder = tmp_path / "recorded"
        shutil.copytree(demo["train_output_dir"] / "checkpoint-3", folder / "checkpoint-3")
        write_json(folder / "run_manifest.json", {"model": str(base.resolve())})
        return folder
    return make


def test_another_base_than_the_recorded_one_is_refused_unless_asked_for(demo, run_trained_from, tmp_path, capsys):
    recorded = demo["root"] / "the-real-base"
    folder = run_trained_from(recorded)
    flags = ["--base_model", str(demo["base"]), "--train_output_dir", str(folder), "--eval_data",
             str(demo["eval_data"]), "--output_dir", str(tmp_path / "outputs"), "--num_examples", "1",
             "--max_new_tokens", "1"]
    assert main(flags) == 2
    assert capsys.readouterr().err == (
        f"error: --base_model {demo['base']}: the tuned model {folder / 'checkpoint-3'} was trained from "
        f"{recorded.resolve()} ({folder / 'run_manifest.json'}); compare with that one, or pass --other_base to "
        "compare with another base (the same model at another path, too)\n")
    assert not (tmp_path / "outputs").exists()
    assert main([*flags, "--other_base"]) == 0
    write_json(folder / "run_manifest.json", {"model": str(demo["base"].resolve())})
    assert main(flags) == 0  # the recorded base itself


def test_the_two_models_are_never_held_at_once(demo, tmp_path, monkeypatch):
    loaded = []

    def load_alone(model_dir, device, dtype):
        assert all(model() is None for model in loaded), "the previous model is still in memory"
        model = load_model(model_dir, dtype)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(evaluate, "load_for_inference", load_alone)
    _compare(demo, demo["train_output_dir"], tmp_path / "outputs")
    assert len(loaded) == 2


def test_an_official_layout_base_with_bin_shards_loads(demo, tmp_path):
    """The base as the official Baichuan2-7B release ships it: two .bin shards and pytorch_model.bin.index.json."""
    official = tmp_path / "Baichuan2-7B-Base"
    shutil.copytree(demo["base"], official, ignore=shutil.ignore_patterns("*.safetensors"))
    write_sharded_bin(load_model(demo["base"]).state_dict(), official, shards=2)
    result = run_script("--base_model", str(official), "--train_output_dir", str(demo["train_output_dir"]),
                        "--eval_data", str(demo["eval_data"]), "--output_dir", str(tmp_path / "outputs"),
                        "--num_examples", "1", "--max_new_tokens", "1")
    assert result.returncode == 0, result.stderr
    assert f"note: loading {official}: 2 weight files" in result.stderr
    payload = json.loads((tmp_path / "outputs" / "eval_results.json").read_text(encoding="utf-8"))
    reference = _compare(demo, demo["train_output_dir"], tmp_path / "reference")
    assert payload["models"]["base"]["scoring"]["accuracy"] == reference["models"]["base"]["scoring"]["accuracy"]
