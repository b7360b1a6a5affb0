"""ds_run_bf16.sh end to end on the CPU: the real DeepSpeed launcher, 2 gloo processes, the tiny demo model.

- ZeRO-2 (the default config), interrupted after a checkpoint and run again: it continues to the end. This is
  the file's one full training run: run_test.py then compares that base/tuned pair, as a user would next;
- LoRA (USE_LORA=true): the demo's adapter trained under ZeRO-2, continued from a checkpoint in a second folder, and
  its merged model compared with the base by `USE_LORA=true bash run_test.sh`;
- ZeRO-3 with bf16 forced on the CPU, gradient checkpointing and accumulation, a few steps; LoRA under ZeRO-3;
- an error in train.py is the launcher's exit status; tuning/runtime/launch.sh: model selection (also with
  USE_LORA) and the CANN check;
- two machines simulated on this one (hostfile `nodeA slots=1`, `nodeB slots=1`, NODE_RANK 0 and 1, no ssh): with a
  shared output folder they train, save and a re-run trains nothing; with a folder per machine both stop at once.

Expectations that depend on the hardware (device, precision, processes) follow the detected device.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import expected_precision

from run_test import main as run_test_main
from tuning.model.baichuan import load_model
from tuning.run_layout import latest_recorded_checkpoint
from tuning.runtime.devices import detect_device

pytestmark = pytest.mark.e2e  # real DeepSpeed launches through ds_run_bf16.sh
TIMEOUT_S = 240
# 400 training reviews, global batch 8 = 2 processes x 4: 50 steps in one epoch, a checkpoint every 10
DEMO_ARGS = ("--global_batch_size", "8", "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "10",
             "--logging_steps", "5", "--disable_tqdm", "true")


@pytest.fixture(scope="module")
def data_dir(make_review_data):
    # 400 training reviews are enough for one epoch of the tiny model to beat the random base clearly
    return make_review_data(train_per_label=200, eval_per_label=40)


@pytest.fixture(scope="module")
def prebuilt_base(data_dir, make_tiny_base):
    return make_tiny_base(data_dir)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(tmp_path: Path, data_dir: Path, **overrides) -> dict:
    """The demo (DEMO=1) on small data, with this interpreter's deepspeed and python."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "DEMO": "1",
        "DEMO_BASE_MODEL": str(tmp_path / "tiny-base"),
        "DEMO_OUTPUT_DIR": str(tmp_path / "tuned"),
        "TRAIN_DATA": str(data_dir / "train.jsonl"),
        "EVAL_DATA": str(data_dir / "eval.jsonl"),
        "MASTER_PORT": str(_free_port()),
    }
    for name in ("WAIMAI_DEVICE", "MODEL", "HOSTFILE", "NODE_RANK", "MASTER_ADDR", "NUM_DEVICES", "USE_LORA"):
        env.pop(name, None)
    return {**env, **overrides}


def _run(repo_root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "ds_run_bf16.sh", *args], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _stop_group(process: subprocess.Popen) -> None:
    """Interrupt the launcher, its processes and tee, as Ctrl-C would; wait until all of them are gone."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def demo_run(repo_root, data_dir, tmp_path_factory) -> dict:
    """`bash ds_run_bf16.sh` on the demo, interrupted after its first checkpoint, then the same command again.

    The first run builds the tiny base model; an interrupted save (checkpoint-900) is added before the second.
    """
    root = tmp_path_factory.mktemp("demo")
    env, output_dir = _env(root, data_dir), root / "tuned"
    with open(root / "first.out", "w") as first_out:
        first = subprocess.Popen(["bash", "ds_run_bf16.sh", *DEMO_ARGS], cwd=repo_root, env=env, stdout=first_out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while latest_recorded_checkpoint(output_dir) is None and first.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint in time"
                time.sleep(0.1)
        finally:
            _stop_group(first)
    first_log = (root / "first.out").read_text()
    interrupted_at = latest_recorded_checkpoint(output_dir)
    assert interrupted_at is not None and not (output_dir / "train_summary.json").exists(), first_log[-3000:]
    (output_dir / "checkpoint-900").mkdir()  # an interrupted save: skipped, and left alone
    (output_dir / "checkpoint-900" / "config.json").write_text("{}", encoding="utf-8")
    second = _run(repo_root, env, *DEMO_ARGS)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"root": root, "base": root / "tiny-base", "output_dir": output_dir, "first_log": first_log,
            "interrupted_at": interrupted_at, "second": second, "port": env["MASTER_PORT"]}


def test_demo_run_interrupted_then_continued(demo_run):
    output_dir, interrupted_at, first_log = demo_run["output_dir"], demo_run["interrupted_at"], demo_run["first_log"]
    assert "running the tiny demo" in first_log and "built tiny base model" in first_log
    device, precision = detect_device(), expected_precision()
    if device.kind == "cpu":
        assert "training in fp32" in first_log
    step = int(interrupted_at.name.split("-")[1])
    assert 10 <= step < 50
    # DeepSpeed's CPU allreduce buffers of both launches (they share the port) are removed with the second
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{demo_run['port']}_*"))
    assert f"resuming from {interrupted_at}" in demo_run["second"].stdout
    assert (output_dir / "checkpoint-900" / "config.json").is_file()
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    processes = 2 if device.kind == "cpu" or device.count >= 2 else 1
    assert (summary["processes"], summary["device"], summary["precision"]) == (processes, device.kind, precision)
    assert summary["global_step"] == 50 and summary["resumed_from"] == str(interrupted_at)
    assert summary["train_samples"] == 400 and summary["eval_samples"] == 80
    assert len(list(output_dir.glob("train_*.log"))) == 2
    state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged == list(range(5, 51, 5))  # the first session's log survives the interruption
    assert all("tokens_per_s" in entry for entry in state["log_history"] if "loss" in entry)


def test_run_test_on_the_demo_pair_shows_what_fine_tuning_learned(demo_run, data_dir, capsys):
    """run_test.py on the trained pair, with the prompt settings of the run (the demo's model_max_length 256).

    The tuned model beats the majority baseline and the base model, with the accuracy the training run reported
    (so the saved model is the trained one), and its greedy answers are label words.
    """
    output_dir, outputs = demo_run["output_dir"], demo_run["root"] / "outputs"
    code = run_test_main(["--base_model", str(demo_run["base"]), "--train_output_dir", str(output_dir),
                          "--eval_data", str(data_dir / "eval.jsonl"), "--output_dir", str(outputs),
                          "--batch_size", "40", "--num_examples", "2"])
    assert code == 0, capsys.readouterr().err
    payload = json.loads((outputs / "eval_results.json").read_text(encoding="utf-8"))
    assert payload["training_config"] == str(output_dir / "run_config.json")
    assert payload["settings"]["model_max_length"] == 256  # MAX_LENGTH of the demo, not run_test's 1024
    assert set(payload["setting_sources"].values()) == {"training run"}
    tuned = payload["models"]["tuned"]
    assert tuned["path"] == str(output_dir)  # the final model, not a checkpoint
    majority = payload["majority_baseline"]["accuracy"]
    assert payload["num_samples"] == 80 and majority == 0.5
    accuracy = {name: model["scoring"]["accuracy"] for name, model in payload["models"].items()}
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    assert accuracy["tuned"] == pytest.approx(summary["eval_accuracy"], abs=1.5 / 80)
    # seed 42: tuned 71%, base 55% (random weights), majority 50%; the margins leave room for other hardware
    assert accuracy["tuned"] >= majority + 0.1 and accuracy["tuned"] >= accuracy["base"] + 0.1, accuracy
    assert tuned["generation"]["parse_rate"] >= 0.9


# LoRA on the random tiny base learns more slowly than full fine-tuning: 3,200 reviews, 2 epochs of 100 steps
LORA_ARGS = ("--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "100", "--eval_points_per_epoch",
             "1", "--logging_steps", "25", "--disable_tqdm", "true")


@pytest.fixture(scope="module")
def lora_demo(repo_root, make_review_data, tmp_path_factory) -> dict:
    """`USE_LORA=true bash ds_run_bf16.sh` on the demo (2 processes, ZeRO-2), then the same run continued from its
    checkpoint-100 in a second folder, as after an interruption."""
    data_dir = make_review_data(train_per_label=1600, eval_per_label=100)
    root = tmp_path_factory.mktemp("lora-demo")
    first = _run(repo_root, _env(root, data_dir, USE_LORA="true"), *LORA_ARGS)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    output_dir, resumed = root / "tuned", root / "resumed"
    resumed.mkdir()
    shutil.copy(output_dir / "run_manifest.json", resumed)
    shutil.copytree(output_dir / "checkpoint-100", resumed / "checkpoint-100")
    second = _run(repo_root, _env(root, data_dir, USE_LORA="true", DEMO_OUTPUT_DIR=str(resumed)), *LORA_ARGS)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"root": root, "data_dir": data_dir, "output_dir": output_dir, "first": first, "resumed": resumed,
            "second": second}


def test_the_lora_demo_trains_an_adapter_under_zero2_and_ends_with_the_merged_model(lora_demo):
    output_dir, first = lora_demo["output_dir"], lora_demo["first"]
    assert "recipe configs/tiny_demo_lora.yaml" in first.stdout
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    device = detect_device()
    processes = 2 if device.kind == "cpu" or device.count >= 2 else 1
    assert (summary["use_lora"], summary["processes"], summary["global_step"]) == (True, processes, 200)
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"] / 10
    manifest = json.loads((output_dir / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["zero_stage"] == 2 and manifest["lora"]["rank"] == 8
    checkpoint = {path.name for path in (output_dir / "checkpoint-100").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "latest", "global_step100"} <= checkpoint
    assert "model.safetensors" not in checkpoint
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert load_model(output_dir).config.vocab_size == load_model(lora_demo["root"] / "tiny-base").config.vocab_size


def test_the_lora_demo_continues_from_a_zero2_checkpoint(lora_demo):
    resumed = lora_demo["resumed"]
    assert f"resuming from {resumed / 'checkpoint-100'}" in lora_demo["second"].stdout
    summary = json.loads((resumed / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["resumed_from"] == str(resumed / "checkpoint-100") and summary["global_step"] == 200
    # the adapter and optimizer states of step 100 were restored: the second half ends near the first run's adapter
    final, uninterrupted, started = (load_file(path) for path in (
        resumed / "adapter" / "adapter_model.safetensors", lora_demo["output_dir"] / "adapter" /
        "adapter_model.safetensors", resumed / "checkpoint-100" / "adapter_model.safetensors"))
    change = sum((uninterrupted[name].float() - started[name].float()).norm() for name in final)
    difference = sum((final[name].float() - uninterrupted[name].float()).norm() for name in final)
    assert difference < 0.05 * change, (difference, change)


def test_run_test_sh_compares_the_base_with_the_merged_lora_model(repo_root, lora_demo):
    """USE_LORA=true bash run_test.sh: the merged model beats the majority baseline and the random base clearly."""
    output_dir = lora_demo["output_dir"]
    env = _env(lora_demo["root"], lora_demo["data_dir"], USE_LORA="true")
    result = subprocess.run(["bash", "run_test.sh", "--num_examples", "1", "--batch_size", "50"], cwd=repo_root,
                            env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((output_dir / "eval" / "eval_results.json").read_text(encoding="utf-8"))
    assert payload["models"]["tuned"]["path"] == str(output_dir)  # the merged model, not a checkpoint
    majority = payload["majority_baseline"]["accuracy"]
    accuracy = {name: model["scoring"]["accuracy"] for name, model in payload["models"].items()}
    # seed 42 on a CPU (bf16 at the time; fp32 now): tuned 69.5%, base 50.5% (random weights), majority 50%
    assert payload["num_samples"] == 200 and majority == 0.5
    assert accuracy["tuned"] >= majority + 0.1 and accuracy["tuned"] >= accuracy["base"] + 0.1, accuracy
    assert payload["models"]["tuned"]["generation"]["parse_rate"] >= 0.9


def test_zero3_bf16_checkpointing_and_accumulation_on_the_cpu(repo_root, data_dir, prebuilt_base, tmp_path):
    env = _env(tmp_path, data_dir, WAIMAI_CPU_BF16="1", DS_CONFIG="ds_config_zero3.json",
               DEMO_BASE_MODEL=str(prebuilt_base))
    result = _run(repo_root, env, "--max_steps", "3", "--max_eval_samples", "20", "--per_device_train_batch_size",
                  "4", "--global_batch_size", "16", "--gradient_checkpointing", "true", "--save_strategy", "no",
                  "--disable_tqdm", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    device = detect_device()
    if device.kind == "cpu" and not device.bf16:
        assert "bf16 on a CPU without native bf16 is emulated" in result.stdout
    output_dir = tmp_path / "tuned"
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["precision"] == "bf16" and summary["global_step"] == 3 and summary["eval_samples"] == 20
    training = json.loads((output_dir / "run_config.json").read_text(encoding="utf-8"))["training"]
    assert summary["global_batch_size"] == 16  # 2 processes x 4 per device x 2 accumulated
    assert (training["per_device_train_batch_size"], training["gradient_accumulation_steps"]) == (4, 2)
    assert summary["eval_accuracy"] is not None
    weights = load_file(output_dir / "model.safetensors")  # ZeRO-3 gathered the full 16-bit weights to save them
    assert weights["lm_head.weight"].dtype == torch.bfloat16 and weights["lm_head.weight"].shape[0] > 1000
    assert load_model(output_dir).lm_head.weight.dtype == torch.float32


def test_lora_under_zero3_gathers_the_partitioned_adapter_and_merges_it(repo_root, data_dir, prebuilt_base, tmp_path):
    env = _env(tmp_path, data_dir, USE_LORA="true", DS_CONFIG="ds_config_zero3.json", DEMO_BASE_MODEL=str(prebuilt_base))
    result = _run(repo_root, env, "--max_steps", "3", "--max_eval_samples", "20", "--save_strategy", "no",
                  "--disable_tqdm", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output_dir = tmp_path / "tuned"
    manifest = json.loads((output_dir / "run_manifest.json").read_text(encoding="utf-8"))
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    adapter = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert manifest["zero_stage"] == 3 and summary["global_step"] == 3
    assert summary["trainable_parameters"] == sum(tensor.numel() for tensor in adapter.values())  # whole, not shards
    assert any(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)  # B starts at zero
    merged, base = load_model(output_dir), load_model(prebuilt_base)
    assert any(not torch.equal(weight, base.state_dict()[name]) for name, weight in merged.state_dict().items())


def test_one_process_trains_the_same_steps_with_the_same_global_batch(repo_root, data_dir, prebuilt_base,
                                                                     demo_run, tmp_path):
    env = _env(tmp_path, data_dir, DEMO_BASE_MODEL=str(prebuilt_base), NUM_DEVICES="1")
    result = _run(repo_root, env, "--global_batch_size", "8", "--per_device_train_batch_size", "4",
                  "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = json.loads((tmp_path / "tuned" / "train_summary.json").read_text(encoding="utf-8"))
    two = json.loads((demo_run["output_dir"] / "train_summary.json").read_text(encoding="utf-8"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 8
    assert one["optimizer_steps"] == two["optimizer_steps"] == 50  # 400 reviews / 8
    training = json.loads((tmp_path / "tuned" / "run_config.json").read_text(encoding="utf-8"))["training"]
    assert (training["per_device_train_batch_size"], training["gradient_accumulation_steps"]) == (4, 2)


def test_failure_in_train_py_is_the_launcher_exit_status(repo_root, data_dir, prebuilt_base, tmp_path):
    # one process is enough to see the status pass through the launcher and tee, and starts faster
    env = _env(tmp_path, data_dir, EVAL_DATA=str(tmp_path / "missing.jsonl"), DEMO_BASE_MODEL=str(prebuilt_base),
               NUM_DEVICES="1")
    result = _run(repo_root, env)
    assert result.returncode == 2
    assert f"error: {tmp_path / 'missing.jsonl'}: file not found" in result.stdout


def _bash(repo_root: Path, script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source tuning/runtime/launch.sh; {script}"], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=60)


def test_model_selection_demo_only_without_the_default_model(repo_root, tmp_path):
    env = {**os.environ, "MODEL": str(tmp_path / "absent")}
    for name in ("OUTPUT_DIR", "DEMO_BASE_MODEL", "DEMO_OUTPUT_DIR", "DEMO"):
        env.pop(name, None)
    shown = 'waimai_select_model; echo "$DEMO|$BASE_MODEL|$TRAIN_OUTPUT_DIR"'
    mistyped = _bash(repo_root, shown, env)
    assert mistyped.returncode == 2
    assert mistyped.stderr.strip() == f"error: MODEL={tmp_path / 'absent'}: no such model folder (unset MODEL to run " \
        "the tiny demo)"
    demo = _bash(repo_root, shown, {**env, "DEMO": "1"})
    assert "running the tiny demo" in demo.stdout
    assert demo.stdout.splitlines()[-1] == "1|output/demo/tiny-base|output/demo/tiny-tuned"
    (tmp_path / "absent").mkdir()
    real = _bash(repo_root, shown, {**env, "OUTPUT_DIR": "out/7b"})
    assert real.stdout.strip() == f"0|{tmp_path / 'absent'}|out/7b"


def test_use_lora_gives_lora_runs_their_own_folders(repo_root, tmp_path):
    """A LoRA run never continues or overwrites a full run: its default folders end in -lora (run_test.sh finds them)."""
    env = {**os.environ, "MODEL": str(tmp_path)}
    for name in ("OUTPUT_DIR", "DEMO_BASE_MODEL", "DEMO_OUTPUT_DIR", "DEMO", "USE_LORA"):
        env.pop(name, None)
    shown = 'waimai_select_model >/dev/null; echo "$LORA|$TRAIN_OUTPUT_DIR"'
    assert _bash(repo_root, shown, {**env, "USE_LORA": "true"}).stdout.strip() == "1|output/baichuan2-7b-waimai-lora"
    assert _bash(repo_root, shown, {**env, "USE_LORA": "Yes", "DEMO": "1"}).stdout.strip() == \
        "1|output/demo/tiny-tuned-lora"
    assert _bash(repo_root, shown, {**env, "USE_LORA": "0"}).stdout.strip() == "0|output/baichuan2-7b-waimai"
    assert _bash(repo_root, shown, {**env, "USE_LORA": "1", "OUTPUT_DIR": "out/mine"}).stdout.strip() == "1|out/mine"


def test_cann_environment_is_sourced_when_present(repo_root, tmp_path):
    (tmp_path / "set_env.sh").write_text('export FAKE_CANN=sourced\n: "$VARIABLE_CANN_LEAVES_UNSET"\n')
    env = {**os.environ, "ASCEND_TOOLKIT_HOME": str(tmp_path), "PYTHON": sys.executable}
    env.pop("WAIMAI_DEVICE", None)
    result = _bash(repo_root, 'waimai_setup_device; echo "$FAKE_CANN $DEVICE_KIND $DEVICE_BACKEND $-"', env)
    assert result.returncode == 0, result.stderr
    cann, kind, backend, flags = result.stdout.split()
    assert (cann, kind, backend) == ("sourced", "cpu", "gloo") and "u" in flags  # nounset is back on


def test_npu_requested_without_cann_is_an_error(repo_root, tmp_path):
    env = {**os.environ, "WAIMAI_DEVICE": "npu", "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann")}
    result = _bash(repo_root, "waimai_setup_device", env)
    if Path("/usr/local/Ascend/ascend-toolkit/set_env.sh").is_file():
        pytest.skip("CANN is installed here")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: WAIMAI_DEVICE=npu but CANN is not installed")


def test_help_prints_usage_and_starts_nothing(repo_root, data_dir, tmp_path):
    env = _env(tmp_path, data_dir)
    result = _run(repo_root, env, "--help")
    assert result.returncode == 0
    assert "bash ds_run_bf16.sh --learning_rate 2e-5" in result.stdout
    assert "python train.py --help" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_missing_training_data_says_how_to_make_it(repo_root, data_dir, tmp_path):
    env = _env(tmp_path, data_dir, TRAIN_DATA=str(tmp_path / "absent.jsonl"))
    result = _run(repo_root, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'absent.jsonl'}: file not found; make it with `python make_data.py --download`"
    )
    assert not (tmp_path / "tiny-base").exists() and not (tmp_path / "tuned").exists()


TWO_NODE_ARGS = ("--max_steps", "2", "--global_batch_size", "4", "--per_device_train_batch_size", "2",
                 "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--max_eval_samples", "8",
                 "--disable_tqdm", "true")


def _two_nodes(repo_root: Path, tmp_path: Path, data_dir: Path, base: Path, output_dirs: tuple[Path, Path]) -> list:
    """`HOSTFILE=hostfile NODE_RANK=<i> MASTER_ADDR=127.0.0.1 bash ds_run_bf16.sh` for nodes 0 and 1 at once."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n", encoding="utf-8")
    port = str(_free_port())
    nodes = []
    for rank, output_dir in enumerate(output_dirs):
        env = _env(tmp_path, data_dir, DEMO_BASE_MODEL=str(base), DEMO_OUTPUT_DIR=str(output_dir),
                   HOSTFILE=str(hostfile), NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1", WAIMAI_DEVICE="cpu")
        nodes.append(subprocess.Popen(["bash", "ds_run_bf16.sh", *TWO_NODE_ARGS], cwd=repo_root, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=TIMEOUT_S)[0])
        finally:
            if node.poll() is None:
                _stop_group(node)
    return [(node.returncode, output) for node, output in zip(nodes, outputs)]


def test_two_nodes_without_ssh_train_once_into_one_shared_folder(repo_root, data_dir, tmp_path):
    base, output_dir = tmp_path / "tiny-base", tmp_path / "shared-run"  # node 0 builds the base, node 1 waits
    first = _two_nodes(repo_root, tmp_path, data_dir, base, (output_dir, output_dir))
    assert [code for code, _ in first] == [0, 0], first[0][1][-3000:] + first[1][1][-3000:]
    assert first[0][1].count("built tiny base model") == 1 and "built tiny base model" not in first[1][1]
    summary = json.loads((output_dir / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["processes"] == 2 and summary["global_step"] == 2
    manifest = json.loads((output_dir / "run_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["world_size"], manifest["zero_stage"]) == (2, 2)
    assert load_model(output_dir).config.vocab_size == load_model(base).config.vocab_size
    assert not list(output_dir.glob(".shared-check-*"))
    again = _two_nodes(repo_root, tmp_path, data_dir, base, (output_dir, output_dir))
    assert [code for code, _ in again] == [0, 0], again[0][1][-3000:] + again[1][1][-3000:]
    assert "already holds this run's final model (checkpoint-2); nothing to train" in again[0][1]


def test_two_nodes_with_a_folder_each_both_stop_with_the_error(repo_root, data_dir, prebuilt_base, tmp_path):
    nodes = _two_nodes(repo_root, tmp_path, data_dir, prebuilt_base, (tmp_path / "on-A", tmp_path / "on-B"))
    for (code, output), folder in zip(nodes, ("on-A", "on-B")):
        assert code == 2, output[-3000:]
        assert (f"error: --output_dir {tmp_path / folder} is not one shared folder: rank 1 on "
                f"{socket.gethostname()} cannot see the files rank 0 writes there") in output
    assert not any((tmp_path / folder / "run_manifest.json").exists() for folder in ("on-A", "on-B"))
