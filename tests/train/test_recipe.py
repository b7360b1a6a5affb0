"""Recipe files and flags: every setting in one file, overrides, pure parsing, the batch derived from the global batch."""

import os
import subprocess
import sys

import pytest
import torch.distributed as dist
import yaml
from accelerate import PartialState

from tuning.runtime import devices
from tuning.runtime.errors import DataError
from tuning.runtime.paths import REPO_ROOT
from tuning.train.recipe import batch_layout, parse_recipe, recipe_parser

RECIPE_7B = REPO_ROOT / "configs" / "baichuan2_7b.yaml"
RECIPE_DEMO = REPO_ROOT / "configs" / "tiny_demo.yaml"
RECIPE_7B_LORA = REPO_ROOT / "configs" / "baichuan2_7b_lora.yaml"
RECIPE_DEMO_LORA = REPO_ROOT / "configs" / "tiny_demo_lora.yaml"


def test_the_7b_recipe_is_the_original_recipe():
    recipe = parse_recipe([str(RECIPE_7B)])
    flags, data = recipe.training, recipe.data
    assert (flags.learning_rate, flags.lr_scheduler_type, flags.warmup_ratio, flags.weight_decay) == (
        1e-5, "cosine", 0.03, 0.0)
    assert (flags.num_train_epochs, flags.gradient_checkpointing, flags.bf16) == (1, True, True)
    assert flags.global_batch_size == 32 and flags.deepspeed == "ds_config_bf16.json"
    assert data.prompt_template == "{review} -> " and data.label_words == "积极,消极" and data.model_max_length == 1024
    assert batch_layout(32, 8, flags.per_device_train_batch_size) == (4, 1)  # 8 devices: 4 x 1, not 1 x 4


def test_the_lora_recipes_differ_from_the_full_ones_only_where_lora_needs_it():
    full, lora = parse_recipe([str(RECIPE_7B)]), parse_recipe([str(RECIPE_7B_LORA)])
    assert lora.lora.use_lora and not full.lora.use_lora
    assert (lora.lora.lora_rank, lora.lora.lora_alpha, lora.lora.lora_dropout) == (8, 16, 0.05)
    assert lora.lora.target_modules() == ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (lora.training.learning_rate, lora.training.deepspeed) == (1e-4, None)  # its own rate; one device, no ZeRO
    assert lora.training.output_dir != full.training.output_dir
    assert batch_layout(32, 1, lora.training.per_device_train_batch_size) == (8, 4)  # one device: 8 x 4
    same = ("global_batch_size", "lr_scheduler_type", "warmup_ratio", "num_train_epochs", "gradient_checkpointing",
            "bf16", "seed", "save_strategy")
    assert all(getattr(lora.training, name) == getattr(full.training, name) for name in same)
    assert lora.data == full.data
    demo, demo_lora = parse_recipe([str(RECIPE_DEMO)]), parse_recipe([str(RECIPE_DEMO_LORA)])
    assert demo_lora.lora == lora.lora and demo_lora.training.deepspeed == demo.training.deepspeed  # ZeRO-2
    assert demo_lora.data == demo.data and demo_lora.training.output_dir.endswith("-lora")


def test_use_lora_without_a_recipe_file_takes_the_lora_recipe():
    recipe = parse_recipe(["--use_lora", "true", "--seed", "3"])
    assert recipe.path == RECIPE_7B_LORA and recipe.training.learning_rate == 1e-4 and recipe.training.seed == 3
    assert parse_recipe(["--use_lora", "false"]).path == RECIPE_7B
    given = parse_recipe([str(RECIPE_7B), "--use_lora", "true"])  # a recipe you name is kept
    assert given.path == RECIPE_7B and given.lora.use_lora and given.training.learning_rate == 1e-5
    assert given.lora == recipe.lora  # its adapter settings: the LoRA recipe's, which it does not set


def test_lora_alpha_follows_the_rank_unless_given():
    assert parse_recipe(["--use_lora", "true"]).lora.lora_alpha == 16  # the LoRA recipe leaves it to the rank
    assert parse_recipe(["--use_lora", "true", "--lora_rank", "4"]).lora.lora_alpha == 8
    assert parse_recipe(["--use_lora", "true", "--lora_rank", "4", "--lora_alpha", "32"]).lora.lora_alpha == 32


def test_a_recipe_without_a_setting_every_recipe_has_is_refused_naming_it(tmp_path, capsys):
    values = RECIPE_DEMO.read_text(encoding="utf-8").replace("model_max_length: 256", "")
    (tmp_path / "short.yaml").write_text(values, encoding="utf-8")
    assert parse_recipe([str(tmp_path / "short.yaml"), "--model_max_length", "64"]).data.model_max_length == 64
    with pytest.raises(SystemExit) as error:  # no code default: it is the recipe's to set
        parse_recipe([str(tmp_path / "short.yaml")])
    assert error.value.code == 2 and "required: --model_max_length" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_setting_of_a_recipe_is_a_flag_with_a_comment(recipe):
    values = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    known = {action.dest for action in recipe_parser()._actions}
    assert set(values) <= known
    for line in recipe.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            assert "#" in line, f"{recipe.name}: no comment on {line!r}"


def test_flags_override_the_recipe_and_the_default_recipe_is_the_7b():
    recipe = parse_recipe([str(RECIPE_DEMO), "--learning_rate", "2e-3", "--model_max_length", "64"])
    assert recipe.training.learning_rate == 2e-3 and recipe.data.model_max_length == 64
    assert recipe.training.per_device_train_batch_size == 16  # from the recipe
    assert parse_recipe(["--seed", "1"]).path == RECIPE_7B
    launched = parse_recipe(["--local_rank=0", str(RECIPE_DEMO), "--seed", "3"])  # as DeepSpeed passes it
    assert launched.path == RECIPE_DEMO and launched.training.seed == 3


@pytest.mark.parametrize("text, message", [
    ("learning_rate: [1\n", "not valid YAML"),
    ("- a list\n", "a recipe is a mapping"),
    ("learning_rat: 1.0e-5\n", "unknown setting 'learning_rat'"),
])
def test_a_bad_recipe_file_is_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: {message}"):
        parse_recipe([str(path)])
    with pytest.raises(DataError, match="cannot read the recipe"):
        parse_recipe([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("global_batch, processes, largest, layout", [
    (32, 8, 4, (4, 1)), (32, 8, 1, (1, 4)), (32, 1, 32, (32, 1)), (32, 1, 4, (4, 8)), (32, 2, 16, (16, 1)),
    (32, 4, 3, (2, 4)),  # 8 per process: the largest divisor that fits is 2
])
def test_batch_layout_keeps_the_global_batch(global_batch, processes, largest, layout):
    device_batch, accumulation = batch_layout(global_batch, processes, largest)
    assert (device_batch, accumulation) == layout and device_batch * accumulation * processes == global_batch


def test_a_global_batch_that_does_not_split_is_an_error():
    with pytest.raises(DataError, match="cannot be split evenly over 3 processes"):
        batch_layout(32, 3, 4)
    with pytest.raises(DataError, match="--gradient_accumulation_steps: derived from --global_batch_size"):
        parse_recipe(["--gradient_accumulation_steps", "4"])


def test_parsing_touches_no_device_process_group_or_environment(monkeypatch):
    def probe():
        raise AssertionError("parsing probed the hardware")

    monkeypatch.setattr(devices, "detect_device", probe)
    environment, accelerate_state = dict(os.environ), dict(PartialState._shared_state)
    process_group = dist.is_initialized()
    recipe = parse_recipe([str(RECIPE_7B), "--bf16", "true", "--deepspeed", "ds_config_bf16.json"])
    assert recipe.training.bf16 is True  # kept as asked: the device decides only when training starts
    assert dict(os.environ) == environment
    assert dist.is_initialized() == process_group and PartialState._shared_state == accelerate_state


def test_help_has_no_side_effects_and_shows_the_recipe_values(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    script = (
        "import os, runpy, sys; before = dict(os.environ); sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as done:\n"
        "    assert done.code == 0\n"
        "from accelerate import PartialState; import torch.distributed as dist\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert not PartialState._shared_state and not dist.is_initialized()\n"
        "print('untouched')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "untouched" in text and "--global_batch_size GLOBAL_BATCH_SIZE" in text
    assert "The initial learning rate for the optimizer. (default: 1e-05)" in text  # the 7B recipe's
    assert "(default: 1024)" in text and "Rank r of each adapter. (default: 8)" in text
