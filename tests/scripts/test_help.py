"""Every script's --help and flag errors answer before torch, transformers and DeepSpeed load (train.py's: test_flags)."""

import subprocess
import sys

import pytest

from tuning.runtime.paths import REPO_ROOT

HEAVY = ("torch", "transformers", "deepspeed")
# Runs a script (a path) or a module (-m NAME) with the given arguments; prints which heavy libraries it imported.
PROBE = (
    "import runpy, sys\n"
    "target, args = sys.argv[1], sys.argv[2:]\n"
    "sys.argv = [target, *args]\n"
    "try:\n"
    "    if target.startswith('-m'):\n"
    "        runpy.run_module(target[2:], run_name='__main__', alter_sys=True)\n"
    "    else:\n"
    "        runpy.run_path(target, run_name='__main__')\n"
    "finally:\n"
    "    print('imported:', *sorted(name for name in {heavy} if name in sys.modules), file=sys.stderr)\n"
).format(heavy=HEAVY)
SCRIPTS = ["predict.py", "run_test.py", "serve.py", "make_data.py", "tools/fetch_assets.py", "-mtuning.run_layout",
           "-mtuning.train.merge_lora"]


def _run(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, target, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("target", SCRIPTS)
def test_help_and_an_unknown_flag_load_no_heavy_library(target):
    result = _run(target, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    assert result.stderr.splitlines()[-1] == "imported:"
    result = _run(target, "--no_such_flag")
    assert result.returncode == 2 and ": error: " in result.stderr  # argparse: unknown flag, or a required one missing
    assert result.stderr.splitlines()[-1] == "imported:"


@pytest.mark.parametrize("target, args, message", [
    ("predict.py", ["--batch_size", "0", "好吃"], "argument --batch_size: must be a whole number >= 1"),
    ("run_test.py", ["--max_samples", "many"], "argument --max_samples: expected a whole number"),
    ("make_data.py", ["--eval_ratio", "2"], "argument --eval_ratio: must be between 0 and 1"),
])
def test_bad_values_are_refused_before_the_heavy_libraries_load(target, args, message):
    result = _run(target, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == "imported:"
