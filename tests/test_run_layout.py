"""The run folder's layout: the recipes name the folders, checkpoints and the tuned model are found in them, and
`python -m tuning.run_layout` gives the launchers the same names."""

import json
import os
import subprocess
import sys

import pytest

from tuning.run_layout import (
    CHECKSUMS_NAME,
    checkpoint_problem,
    checksum_problem,
    default_run_dirs,
    latest_complete_checkpoint,
    read_recipe_file,
    recorded_run_config,
    run_defaults,
    tuned_model_in,
    write_checksums,
)
from tuning.runtime.errors import DataError
from tuning.runtime.paths import REPO_ROOT


def _model_folder(path, with_state=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"x")
    if with_state:
        (path / "trainer_state.json").write_text('{"global_step": 1}', encoding="utf-8")
    return path


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_the_default_runs_are_the_recipes_folders(demo, lora):
    run = run_defaults(demo, lora)
    values = read_recipe_file(run.recipe)
    assert run.recipe.parent == REPO_ROOT / "configs" and values.get("use_lora", False) == lora
    assert run.base_model == REPO_ROOT / values["model_name_or_path"]
    assert run.output_dir == REPO_ROOT / values["output_dir"]
    assert run_defaults(not demo, lora).output_dir != run.output_dir
    assert run_defaults(demo, not lora).output_dir != run.output_dir  # a LoRA run never continues a full one
    assert run_defaults(demo, not lora).base_model == run.base_model
    assert default_run_dirs(lora)[int(demo)] == run.output_dir


def _layout_command(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "USE_LORA"} | env
    return subprocess.run([sys.executable, "-m", "tuning.run_layout", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("use_lora, lora", [("", False), ("true", True), ("No", False), ("1", True)])
def test_the_launchers_get_recipe_base_model_and_output_folder(demo, use_lora, lora):
    result = _layout_command({"USE_LORA": use_lora}, *(["--demo"] if demo else []))
    assert result.returncode == 0, result.stderr
    run = run_defaults(demo, lora)
    expected = [str(path.relative_to(REPO_ROOT)) for path in (run.recipe, run.base_model, run.output_dir)]
    assert result.stdout.splitlines() == [" ".join(expected)]


def test_a_bad_use_lora_is_a_one_line_error():
    result = _layout_command({"USE_LORA": "maybe"})
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: USE_LORA=maybe: expected true or false\n")


def test_latest_complete_checkpoint_skips_interrupted_save(tmp_path):
    _model_folder(tmp_path / "checkpoint-10")
    _model_folder(tmp_path / "checkpoint-9")
    _model_folder(tmp_path / "checkpoint-20", with_state=False)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert (tmp_path / "checkpoint-20").is_dir()


def test_no_checkpoint(tmp_path):
    assert latest_complete_checkpoint(tmp_path) is None
    assert latest_complete_checkpoint(tmp_path / "absent") is None


def test_tuned_model_prefers_final_model_over_checkpoints(tmp_path):
    _model_folder(tmp_path / "checkpoint-5")
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        (tmp_path / name).write_bytes(b"{}")
    assert tuned_model_in(tmp_path) == tmp_path
    (tmp_path / "model.safetensors").unlink()
    assert tuned_model_in(tmp_path) == tmp_path / "checkpoint-5"
    with pytest.raises(DataError, match="no final model"):
        tuned_model_in(tmp_path / "checkpoint-5" / "missing")


def test_an_interrupted_final_save_falls_back_to_the_latest_checkpoint_with_a_note(tmp_path, capsys):
    _model_folder(tmp_path / "checkpoint-5")
    for name in ("config.json", "model.safetensors"):  # killed before tokenizer.model was written
        (tmp_path / name).write_bytes(b"{}")
    assert tuned_model_in(tmp_path) == tmp_path / "checkpoint-5"
    assert capsys.readouterr().err == (f"note: {tmp_path}: the final model is incomplete (no tokenizer.model: an "
                                       "interrupted save?); using checkpoint-5\n")
    assert tuned_model_in(tmp_path / "checkpoint-5") == tmp_path / "checkpoint-5"  # a model without tokenizer.model:
    # with no checkpoint to fall back to, loading it names what it lacks


@pytest.mark.parametrize("state", [b"", b"{", b"[]"])
def test_a_damaged_trainer_state_makes_the_checkpoint_incomplete(tmp_path, state):
    _model_folder(tmp_path / "checkpoint-5")
    (_model_folder(tmp_path / "checkpoint-9") / "trainer_state.json").write_bytes(state)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-5"
    assert checkpoint_problem(tmp_path / "checkpoint-9") == (
        "trainer_state.json is damaged (not a JSON object)")
    assert checkpoint_problem(tmp_path / "checkpoint-5") is None


def test_the_checksum_record_names_a_changed_added_or_missing_file(tmp_path):
    checkpoint = _model_folder(tmp_path / "checkpoint-5")
    (checkpoint / "global_step5").mkdir()
    (checkpoint / "global_step5" / "optim_states.pt").write_bytes(b"states")
    assert checksum_problem(checkpoint).startswith(f"no {CHECKSUMS_NAME}")
    write_checksums(checkpoint)
    assert set(json.loads((checkpoint / CHECKSUMS_NAME).read_text(encoding="utf-8"))["files"]) == {
        "config.json", "model.safetensors", "trainer_state.json", "global_step5/optim_states.pt"}
    assert checksum_problem(checkpoint) is None
    (checkpoint / "global_step5" / "optim_states.pt").write_bytes(b"stateS")
    assert checksum_problem(checkpoint) == "global_step5/optim_states.pt differs from the SHA-256 recorded at the save"
    (checkpoint / "global_step5" / "optim_states.pt").write_bytes(b"states")
    (checkpoint / "extra.pt").write_bytes(b"planted")
    assert checksum_problem(checkpoint) == "extra.pt was not written by the save"
    (checkpoint / "extra.pt").unlink()
    (checkpoint / "config.json").unlink()
    assert checksum_problem(checkpoint) == "config.json is missing"
    (checkpoint / CHECKSUMS_NAME).write_text("[]", encoding="utf-8")
    assert checksum_problem(checkpoint) == f"{CHECKSUMS_NAME} is damaged"


def test_run_config_is_beside_the_model_or_its_checkpoint_folder(tmp_path):
    (tmp_path / "run" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "run" / "other").mkdir()
    assert recorded_run_config(tmp_path / "run") is None
    (tmp_path / "run" / "run_config.json").write_text('{"data": {}}', encoding="utf-8")
    config = tmp_path / "run" / "run_config.json"
    assert recorded_run_config(tmp_path / "run") == (config, {"data": {}})
    assert recorded_run_config(tmp_path / "run" / "checkpoint-20") == (config, {"data": {}})
    assert recorded_run_config(tmp_path / "run" / "other") is None  # only a checkpoint-N belongs to its parent's run
