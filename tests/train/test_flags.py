"""train.py's fast flags: `--help` and flag errors before torch loads, true to the full parser and to transformers."""

import json
import subprocess
import sys

import pytest

from tuning.run_layout import recipe_file
from tuning.runtime.errors import DataError
from tuning.runtime.paths import REPO_ROOT
from tuning.train import flags
from tuning.train.flags import TRAINING_ARGUMENTS_FILE, check_flags, fast_parser
from tuning.train.recipe import parse_recipe, recipe_parser, training_arguments_actions

HEAVY = ("torch", "transformers", "deepspeed")
# train.py with the given arguments; prints which heavy libraries were imported when it exits
PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['train.py', *sys.argv[1:]]\n"
    "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
    "finally:\n    print('imported:', *sorted(name for name in {heavy} if name in sys.modules), file=sys.stderr)\n"
).format(heavy=HEAVY)


def test_the_recorded_training_arguments_are_the_installed_transformers():
    recorded = json.loads(TRAINING_ARGUMENTS_FILE.read_text(encoding="utf-8"))
    assert recorded["actions"] == training_arguments_actions(), "run `python -m tuning.train.recipe` to update it"


@pytest.mark.parametrize("recipe", [recipe_file(demo, lora) for demo in (False, True) for lora in (False, True)],
                         ids=lambda path: path.name)
def test_the_fast_help_is_the_full_parsers(recipe):
    assert fast_parser(recipe).format_help() == recipe_parser(recipe).format_help()


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_and_flag_errors_answer_before_torch_transformers_and_deepspeed_load():
    result = _train("--help")
    assert result.returncode == 0 and "--per_device_train_batch_size" in result.stdout
    assert result.stderr.splitlines()[-1] == "imported:"
    for args, message in [(["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
                          (["configs/tiny_demo.yaml", "--learning_rate", "fast"], "invalid float value: 'fast'"),
                          (["--padding", "none"], "argument --padding: invalid choice: 'none'")]:
        result = _train(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1] == "imported:"


def test_what_only_the_full_parser_knows_is_left_to_it(tmp_path, monkeypatch):
    check_flags([str(tmp_path / "missing.yaml")])  # parse_recipe reports it, once per machine
    check_flags(["--bf16", "maybe"])  # transformers' own bool type
    monkeypatch.setattr(flags.importlib.metadata, "version", lambda name: "0.0.0")
    assert fast_parser(recipe_file()) is None  # recorded for another transformers: train.py --help takes the long way


def test_a_negative_learning_rate_is_one_line_before_torch_loads(tmp_path):
    recipe = tmp_path / "negative.yaml"
    text = recipe_file(demo=True).read_text(encoding="utf-8")
    recipe.write_text(text.replace("learning_rate: 1.5e-3", "learning_rate: -1.5e-3"), encoding="utf-8")
    for args in ([str(recipe)], ["configs/tiny_demo.yaml", "--learning_rate", "-1.5e-3"]):
        result = _train(*args)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and lines == ["error: --learning_rate -0.0015: must be more than 0",
                                                    "imported:"], result.stderr


def test_a_negative_number_is_a_flags_value():
    assert flags.join_negative_numbers(["--learning_rate", "-1.5e-3", "--seed", "-1", "--bf16", "--x=-2"]) == [
        "--learning_rate=-1.5e-3", "--seed=-1", "--bf16", "--x=-2"]
    with pytest.raises(DataError, match=r"^--learning_rate -0.0015: must be more than 0$"):
        parse_recipe(["--learning_rate", "-1.5e-3"])  # the full parser (another transformers than recorded)
    assert fast_parser(recipe_file()).parse_args(flags.split_recipe_argument(
        ["--weight_decay", "-1e-2"])[1]).weight_decay == -0.01
