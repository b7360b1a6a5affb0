"""train.py's fast flags: `--help` and flag errors before torch loads, true to the full parser and to transformers."""

import json
import subprocess
import sys

import pytest

from tuning.run_layout import recipe_file
from tuning.runtime.paths import REPO_ROOT
from tuning.train import flags
from tuning.train.flags import TRAINING_ARGUMENTS_FILE, check_flags, fast_parser
from tuning.train.recipe import recipe_parser, training_arguments_actions

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
