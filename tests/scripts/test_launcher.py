"""ds_run_bf16.sh's decisions for accelerators and clusters, seen through a stub `deepspeed` on PATH.

The stub records its arguments and the environment it was started with; a stub interpreter (PYTHON) stands in for
the device probe where the test needs an NPU or GPU machine. No training runs here (see test_ds_run.py for that).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lock_holder import start_lock_holder

from tuning.runtime.lock import LOCK_NAME

RECIPE_VARIABLES = ("LR", "EPOCHS", "BATCH_SIZE", "GLOBAL_BATCH_SIZE", "GRAD_ACCUM", "MAX_LENGTH", "GRADIENT_CHECKPOINTING",
                    "EVAL_BATCH_SIZE", "LOGGING_STEPS", "WARMUP_RATIO", "WEIGHT_DECAY", "LR_SCHEDULER", "PADDING",
                    "SAVE_STRATEGY", "EVAL_STRATEGY", "BF16", "FP16", "TF32", "SEED", "LORA_RANK", "LORA_ALPHA",
                    "LORA_DROPOUT", "LORA_TARGET")
RECORDED_ENV = ("DS_ENV_FILE", "WAIMAI_LAUNCH_LOCK", "DS_ACCELERATOR", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "PYTORCH_NPU_ALLOC_CONF",
                "PYTORCH_CUDA_ALLOC_CONF", "ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "FAKE_CANN")


def _write_script(path: Path, text: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + text, encoding="utf-8")
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path):
    """A stub `deepspeed` first on PATH, a stub probe interpreter, training data and an (empty) model folder."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    lines = "".join(f'echo "{name}=${{{name}-<unset>}}" >>"{record}/deepspeed.env"\n' for name in RECORDED_ENV)
    _write_script(bin_dir / "deepspeed", f'printf "%s\\n" "$@" >"{record}/deepspeed.args"\n' + lines +
                  f'if [ -n "${{DS_ENV_FILE:-}}" ]; then cp "$DS_ENV_FILE" "{record}/deepspeed_env"; fi\n'
                  f'if [ -f "$OUTPUT_DIR/.run.lock" ]; then cp "$OUTPUT_DIR/.run.lock" "{record}/lock_at_launch"; fi\n')
    # the probe prints FAKE_DEVICE ("<kind> <count> <backend> <bf16>") and records how it was started; other calls
    # (the launcher's free-port query, the run defaults) go to the real interpreter
    probe = _write_script(tmp_path / "probe-python", f'if [ "$*" != "-m tuning.runtime.devices" ]; then '
                                                     f'exec "{sys.executable}" "$@"; fi\n'
                                                     f'echo "$* AUTOLOAD=${{TORCH_DEVICE_BACKEND_AUTOLOAD-}}" '
                                                     f'>>"{record}/probe"\necho "$FAKE_DEVICE"\n')
    (tmp_path / "train.jsonl").write_text('{"review": "好吃", "label": "积极"}\n', encoding="utf-8")
    (tmp_path / "model").mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(probe),
           "HOME": str(tmp_path / "home"), "MODEL": str(tmp_path / "model"), "OUTPUT_DIR": str(tmp_path / "out"),
           "TRAIN_DATA": str(tmp_path / "train.jsonl"), "FAKE_DEVICE": "npu 8 hccl 1"}
    for name in (*RECORDED_ENV, *RECIPE_VARIABLES, "WAIMAI_DEVICE", "NUM_DEVICES", "HOSTFILE", "NODE_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "DEMO", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "USE_LORA", "DS_CONFIG",
                 "CONFIG", "DS_ENV_FILE", "OMP_NUM_THREADS", "BAICHUAN_NPU_FUSED_KERNELS"):
        env.pop(name, None)
    return {"env": env, "record": record, "root": tmp_path}


def _launch(repo_root: Path, machine: dict, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "ds_run_bf16.sh", *args], cwd=repo_root, env={**machine["env"], **env},
                          capture_output=True, text=True, timeout=120)


def _launcher_args(machine: dict) -> list[str]:
    """The deepspeed arguments before train.py."""
    args = (machine["record"] / "deepspeed.args").read_text(encoding="utf-8").splitlines()
    return args[: args.index("train.py")]


def _launcher_env(machine: dict) -> dict:
    lines = (machine["record"] / "deepspeed.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("kind, variable", [("npu", "ASCEND_RT_VISIBLE_DEVICES"), ("cuda", "CUDA_VISIBLE_DEVICES")])
def test_visible_devices_are_the_devices_deepspeed_uses(repo_root, machine, kind, variable):
    backend = {"npu": "hccl", "cuda": "nccl"}[kind]
    result = _launch(repo_root, machine, FAKE_DEVICE=f"{kind} 4 {backend} 1", **{variable: "4,5,6,7"})
    assert result.returncode == 0, result.stderr
    args = _launcher_args(machine)
    assert args[args.index("--include") + 1] == "localhost:4,5,6,7" and "--num_gpus" not in args
    result = _launch(repo_root, machine, FAKE_DEVICE=f"{kind} 4 {backend} 1", NUM_DEVICES="2", **{variable: "4,5,6,7"})
    assert result.returncode == 0, result.stderr
    assert _launcher_args(machine)[-1] == "localhost:4,5"


def test_without_visible_devices_all_of_them_are_used(repo_root, machine):
    assert _launch(repo_root, machine).returncode == 0
    args = _launcher_args(machine)
    assert args[args.index("--num_gpus") + 1] == "8" and "--include" not in args


def test_a_device_list_deepspeed_cannot_take_is_one_line(repo_root, machine):
    result = _launch(repo_root, machine, FAKE_DEVICE="cuda 2 nccl 1", CUDA_VISIBLE_DEVICES="GPU-5b1e,GPU-77aa")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: CUDA_VISIBLE_DEVICES=GPU-5b1e,GPU-77aa: expected device numbers such as 4,5,6,7"
    assert not (machine["record"] / "deepspeed.args").exists()


def test_npu_defaults_for_long_loads_and_changing_shapes_can_be_overridden(repo_root, machine):
    assert _launch(repo_root, machine).returncode == 0
    env = _launcher_env(machine)
    assert (env["DS_ACCELERATOR"], env["HCCL_CONNECT_TIMEOUT"], env["HCCL_EXEC_TIMEOUT"]) == ("npu", "1200", "3600")
    assert env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    assert _launch(repo_root, machine, HCCL_EXEC_TIMEOUT="7200", PYTORCH_NPU_ALLOC_CONF="").returncode == 0
    env = _launcher_env(machine)
    assert env["HCCL_EXEC_TIMEOUT"] == "7200" and env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"


def test_cuda_gets_its_allocator_default_and_its_accelerator(repo_root, machine):
    assert _launch(repo_root, machine, FAKE_DEVICE="cuda 2 nccl 1").returncode == 0
    env = _launcher_env(machine)
    assert (env["DS_ACCELERATOR"], env["PYTORCH_CUDA_ALLOC_CONF"]) == ("cuda", "expandable_segments:True")
    assert env["HCCL_CONNECT_TIMEOUT"] == "<unset>"


def test_waimai_device_cpu_pins_deepspeeds_accelerator_to_the_cpu(repo_root, machine):
    """The real probe: WAIMAI_DEVICE=cpu on any host gives DeepSpeed's CPU accelerator, never HCCL beside gloo."""
    result = _launch(repo_root, machine, PYTHON=sys.executable, WAIMAI_DEVICE="cpu", NUM_DEVICES="2")
    assert result.returncode == 0, result.stderr
    assert _launcher_env(machine)["DS_ACCELERATOR"] == "cpu"
    args = _launcher_args(machine)
    assert args[args.index("--num_gpus") + 1] == "2"


@pytest.mark.parametrize("layout", ["cann-8.5-user", "home-path", "toolkit-home"])
def test_cann_is_found_where_each_release_installs_it_and_sourced_safely(repo_root, machine, layout):
    """CANN's set_env.sh reads unset variables and runs failing commands; the launcher's options survive it."""
    root = machine["root"]
    folder = {"cann-8.5-user": root / "home" / "Ascend" / "cann", "home-path": root / "cann-8.5.0",
              "toolkit-home": root / "ascend-toolkit" / "latest"}[layout]
    folder.mkdir(parents=True)
    (folder / "set_env.sh").write_text('export FAKE_CANN="$SOME_UNSET_VARIABLE"sourced\nfalse\nfalse | true\n',
                                       encoding="utf-8")
    extra = {"home-path": {"ASCEND_HOME_PATH": str(folder)}, "toolkit-home": {"ASCEND_TOOLKIT_HOME": str(folder)}}
    result = _launch(repo_root, machine, **extra.get(layout, {}))
    assert result.returncode == 0, result.stderr
    assert _launcher_env(machine)["FAKE_CANN"] == "sourced"
    script = 'set -euo pipefail; source tuning/runtime/launch.sh; waimai_setup_device; echo "$-" "$(set -o | grep pipefail)"'
    shown = subprocess.run(["bash", "-c", script], cwd=repo_root, env={**machine["env"], **extra.get(layout, {})},
                           capture_output=True, text=True, timeout=60)
    flags, _, pipefail = shown.stdout.split()
    assert "e" in flags and "u" in flags and pipefail == "on"


def _train_args(machine: dict) -> list[str]:
    """The arguments deepspeed passes to train.py."""
    args = (machine["record"] / "deepspeed.args").read_text(encoding="utf-8").splitlines()
    return args[args.index("train.py") + 1:]


def test_use_lora_trains_the_7b_on_one_device_with_the_lora_recipe(repo_root, machine):
    result = _launch(repo_root, machine, "--lora_rank", "16", USE_LORA="true")
    assert result.returncode == 0, result.stderr
    args, train = _launcher_args(machine), _train_args(machine)
    assert args[args.index("--num_gpus") + 1] == "1"  # of the machine's 8 NPUs
    assert train[0] == "configs/baichuan2_7b_lora.yaml"
    assert train[train.index("--use_lora") + 1] == "true" and train[-2:] == ["--lora_rank", "16"]
    assert "--deepspeed" not in train  # the recipe's: no ZeRO on one device
    result = _launch(repo_root, machine, USE_LORA="TRUE", NUM_DEVICES="8", DS_CONFIG="ds_config_bf16.json")
    assert result.returncode == 0, result.stderr
    args, train = _launcher_args(machine), _train_args(machine)
    assert args[args.index("--num_gpus") + 1] == "8" and train[train.index("--deepspeed") + 1] == "ds_config_bf16.json"


def test_a_full_run_is_unchanged_and_a_bad_use_lora_is_one_line(repo_root, machine):
    assert _launch(repo_root, machine, USE_LORA="false").returncode == 0
    args, train = _launcher_args(machine), _train_args(machine)
    assert args[args.index("--num_gpus") + 1] == "8" and train[0] == "configs/baichuan2_7b.yaml"
    (machine["record"] / "deepspeed.args").unlink()
    result = _launch(repo_root, machine, USE_LORA="maybe")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: USE_LORA=maybe: expected true or false"
    assert not (machine["record"] / "deepspeed.args").exists()


def test_the_probe_runs_without_torchs_backend_autoload(repo_root, machine):
    assert _launch(repo_root, machine).returncode == 0
    assert (machine["record"] / "probe").read_text(encoding="utf-8").strip() == "-m tuning.runtime.devices AUTOLOAD=0"


def test_torch_npu_without_cann_is_one_line_although_import_torch_would_raise(repo_root, machine, tmp_path):
    """torch >= 2.5 imports torch_npu on `import torch` (entry point `torch.backends`); with CANN missing that raises."""
    site = tmp_path / "site"
    (site / "torch_npu").mkdir(parents=True)
    (site / "torch_npu" / "__init__.py").write_text(
        "raise ImportError('libascendcl.so: cannot open shared object file')\n", encoding="utf-8")
    (site / "torch_npu-2.13.0.dist-info").mkdir()
    (site / "torch_npu-2.13.0.dist-info" / "METADATA").write_text("Name: torch_npu\nVersion: 2.13.0\n")
    (site / "torch_npu-2.13.0.dist-info" / "entry_points.txt").write_text(
        "[torch.backends]\ntorch_npu = torch_npu:_autoload\n", encoding="utf-8")
    env = {**machine["env"], "PYTHONPATH": str(site)}
    plain = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "Failed to load the backend extension: torch_npu" in plain.stderr
    result = _launch(repo_root, machine, PYTHONPATH=str(site), PYTHON=sys.executable)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: torch_npu is installed but failed to load (libascendcl.so: cannot open shared object file); "
        "source CANN's set_env.sh (e.g. /usr/local/Ascend/cann/set_env.sh) or install the torch_npu that matches torch"
    ]


def test_a_mistyped_model_is_an_error_not_the_demo(repo_root, machine):
    missing = machine["root"] / "Baichuan2-7b-Bsae"
    result = _launch(repo_root, machine, MODEL=str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: MODEL={missing}: no such model folder (unset MODEL to run the tiny demo)"
    assert "tiny demo instead" not in result.stdout and not (machine["record"] / "deepspeed.args").exists()


def test_machines_without_passwordless_ssh_launch_with_their_node_rank(repo_root, machine):
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=8\nnodeB slots=8\n", encoding="utf-8")
    result = _launch(repo_root, machine, HOSTFILE=str(hostfile), NODE_RANK="1", MASTER_ADDR="10.0.0.1")
    assert result.returncode == 0, result.stderr
    args = _launcher_args(machine)
    assert args[args.index("--hostfile") + 1] == str(hostfile) and "--no_ssh" in args
    assert args[args.index("--node_rank") + 1] == "1" and args[args.index("--master_addr") + 1] == "10.0.0.1"
    result = _launch(repo_root, machine, HOSTFILE=str(hostfile), NODE_RANK="1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: NODE_RANK=1 needs MASTER_ADDR, the address of the machine with NODE_RANK=0"


def test_other_nodes_wait_for_node_0s_demo_base_and_stop_when_it_never_comes(repo_root, machine):
    base = machine["root"] / "demo-base"
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n", encoding="utf-8")
    result = _launch(repo_root, machine, DEMO="1", DEMO_BASE_MODEL=str(base), HOSTFILE=str(hostfile), NODE_RANK="1",
                     MASTER_ADDR="127.0.0.1", WAIMAI_DEMO_BASE_WAIT_S="2")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no demo base model at {base} after 2 s: node 0 builds it there, so DEMO_BASE_MODEL must be on a file "
        "system shared by all machines")
    assert not base.exists()


def test_device_check_on_a_machine_without_an_accelerator_stops_before_anything_runs(repo_root):
    from tuning.runtime.devices import detect_device

    if detect_device().kind != "cpu":
        pytest.skip("this machine has an accelerator: tools/device_check.sh would run the whole check")
    env = {**os.environ, "PYTHON": sys.executable, "WAIMAI_DEVICE": "cpu"}
    before = set((repo_root / "output").glob("device_check/*"))
    result = subprocess.run(["bash", "tools/device_check.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2  # the pinned set passed the version check; the device did not
    assert result.stderr.strip() == "error: no NPU or GPU found (torch sees only the CPU); this check needs one"
    assert set((repo_root / "output").glob("device_check/*")) == before


def test_a_hyperparameter_in_the_environment_is_an_error_naming_the_flag(repo_root, machine):
    """LR=2e-5 used to override the recipe; now it would be silently ignored, so it stops the launch in one line."""
    result = _launch(repo_root, machine, LR="2e-5", EPOCHS="2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: LR=2e-5 EPOCHS=2: hyperparameters are not read from the environment; pass them as flags after the "
        "script (`bash ds_run_bf16.sh --learning_rate 2e-5 --num_train_epochs 2`) or set them in the recipe file "
        "(CONFIG)"]
    assert not (machine["record"] / "deepspeed.args").exists()
    assert _launch(repo_root, machine, "--learning_rate", "2e-5").returncode == 0
    assert _train_args(machine)[-2:] == ["--learning_rate", "2e-5"]


def _master_port(machine: dict) -> str:
    args = _launcher_args(machine)
    return args[args.index("--master_port") + 1]


def test_two_runs_on_one_machine_get_free_ports_and_clusters_keep_theirs(repo_root, machine):
    """Two users, or the demo beside a real run: both took 29500 and the second died with EADDRINUSE."""
    runs = []
    for index in range(2):
        record = machine["root"] / f"record-{index}"
        record.mkdir()
        stub = machine["root"] / "bin" / "deepspeed"
        env = {**machine["env"], "OUTPUT_DIR": str(machine["root"] / f"out-{index}")}
        script = stub.read_text(encoding="utf-8").replace(str(machine["record"]), str(record))
        bin_dir = machine["root"] / f"bin-{index}"
        bin_dir.mkdir()
        _write_script(bin_dir / "deepspeed", script.removeprefix("#!/usr/bin/env bash\n"))
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        runs.append((record, subprocess.Popen(["bash", "ds_run_bf16.sh"], cwd=repo_root, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    ports = []
    for record, run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        args = (record / "deepspeed.args").read_text(encoding="utf-8").splitlines()
        ports.append(int(args[args.index("--master_port") + 1]))
    assert ports[0] != ports[1] and 29500 not in ports
    assert _launch(repo_root, machine, MASTER_PORT="29611").returncode == 0 and _master_port(machine) == "29611"
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=8\nnodeB slots=8\n", encoding="utf-8")
    assert _launch(repo_root, machine, HOSTFILE=str(hostfile)).returncode == 0 and _master_port(machine) == "29500"


@pytest.mark.parametrize("kind, variable", [("npu", "ASCEND_RT_VISIBLE_DEVICES"), ("cuda", "CUDA_VISIBLE_DEVICES")])
def test_with_a_hostfile_visible_devices_are_the_devices_used_on_every_machine(repo_root, machine, kind, variable):
    """DeepSpeed ignores the variable with a hostfile and starts ranks on slots 0..n-1: devices 4-7 ran on 0-3."""
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("# two machines\nnodeA slots=8\n\nnodeB slots=8\n", encoding="utf-8")
    device = f"{kind} 8 {'hccl' if kind == 'npu' else 'nccl'} 1"
    result = _launch(repo_root, machine, FAKE_DEVICE=device, HOSTFILE=str(hostfile), **{variable: "4,5,6,7"})
    assert result.returncode == 0, result.stderr
    args = _launcher_args(machine)
    assert args[args.index("--include") + 1] == "nodeA:4,5,6,7@nodeB:4,5,6,7" and "--num_gpus" not in args
    assert _launch(repo_root, machine, FAKE_DEVICE=device, HOSTFILE=str(hostfile), NUM_DEVICES="2", NODE_RANK="1",
                   MASTER_ADDR="10.0.0.1", **{variable: "4,5,6,7"}).returncode == 0
    args = _launcher_args(machine)
    assert args[args.index("--include") + 1] == "nodeA:4,5@nodeB:4,5" and "--no_ssh" in args
    hostfile.write_text("nodeA slots=8\nnodeB slots=4\n", encoding="utf-8")
    (machine["record"] / "deepspeed.args").unlink()
    result = _launch(repo_root, machine, FAKE_DEVICE=device, HOSTFILE=str(hostfile), **{variable: "4,5,6,7"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {variable}=4,5,6,7 but {hostfile} says `nodeB slots=4`: slots counts all devices of a machine "
        "(0..slots-1), so device 7 needs slots=8 or more"]
    assert not (machine["record"] / "deepspeed.args").exists()


def test_a_missing_hostfile_is_an_error_not_a_run_on_this_machine_alone(repo_root, machine):
    result = _launch(repo_root, machine, HOSTFILE=str(machine["root"] / "hostfiel"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: HOSTFILE={machine['root'] / 'hostfiel'}: file not found"]


def _forwarded(text: str) -> dict:
    """DeepSpeed's reading of a .deepspeed_env file: KEY=value lines, a later line winning."""
    return dict(line.split("=", 1) for line in text.splitlines())


def test_with_a_hostfile_and_ssh_the_settings_reach_every_machine_through_deepspeed_env(repo_root, machine):
    """pdsh forwards only some name prefixes; the rest of what train.py reads goes into DeepSpeed's env file, after
    which the user's own ~/.deepspeed_env and ./.deepspeed_env lines still win."""
    home = machine["root"] / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=eth1\nOMP_NUM_THREADS=4\n", encoding="utf-8")
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=8\nnodeB slots=8\n", encoding="utf-8")
    result = _launch(repo_root, machine, HOSTFILE=str(hostfile), BAICHUAN_NPU_FUSED_KERNELS="0",
                     OMP_NUM_THREADS="8", WAIMAI_CPU_BF16="1")
    assert result.returncode == 0, result.stderr
    forwarded = _forwarded((machine["record"] / "deepspeed_env").read_text(encoding="utf-8"))
    assert forwarded == {"DS_ACCELERATOR": "npu", "WAIMAI_CPU_BF16": "1", "BAICHUAN_NPU_FUSED_KERNELS": "0",
                         "OMP_NUM_THREADS": "4", "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
                         "HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "3600", "NCCL_SOCKET_IFNAME": "eth1",
                         "WAIMAI_LAUNCH_LOCK": _launcher_env(machine)["WAIMAI_LAUNCH_LOCK"]}
    assert not Path(_launcher_env(machine)["DS_ENV_FILE"]).exists()  # a temporary file, removed at the end
    (machine["record"] / "deepspeed_env").unlink()
    result = _launch(repo_root, machine, HOSTFILE=str(hostfile), NODE_RANK="0", MASTER_ADDR="10.0.0.1")
    assert result.returncode == 0 and not (machine["record"] / "deepspeed_env").exists()  # each machine's own launch


def test_the_real_deepspeed_runner_hands_the_settings_and_devices_to_pdsh(repo_root, machine):
    """DeepSpeed 0.19.8's own runner with stub ssh and pdsh: the command pdsh would run on each machine exports what
    train.py needs, and its world info holds the visible devices of both machines."""
    import base64
    import json

    bin_dir = machine["root"] / "ssh-bin"
    bin_dir.mkdir()
    _write_script(bin_dir / "ssh", 'if [ "${*: -1}" = "-I" ]; then echo 10.0.0.1; fi\n')  # `hostname -I` on nodeA
    _write_script(bin_dir / "pdsh", f'printf "%s\\n" "$@" >"{machine["record"]}/pdsh.args"\n')
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=8\nnodeB slots=8\n", encoding="utf-8")
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), machine["env"]["PATH"].split(os.pathsep, 1)[1]])
    result = _launch(repo_root, machine, PATH=path, FAKE_DEVICE="cuda 8 nccl 1", HOSTFILE=str(hostfile),
                     CUDA_VISIBLE_DEVICES="4,5,6,7", BAICHUAN_NPU_FUSED_KERNELS="0", OMP_NUM_THREADS="6")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pdsh = (machine["record"] / "pdsh.args").read_text(encoding="utf-8").splitlines()
    assert pdsh[pdsh.index("-w") + 1] == "nodeA,nodeB"
    exports = next(line for line in pdsh if line.startswith("export "))
    for expected in ("export DS_ACCELERATOR=cuda;", "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True;",
                     "export BAICHUAN_NPU_FUSED_KERNELS=0;", "export OMP_NUM_THREADS=6;"):
        assert expected in exports, exports
    world_info = next(line for line in pdsh if line.startswith("--world_info="))
    assert json.loads(base64.urlsafe_b64decode(world_info.split("=", 1)[1])) == {"nodeA": [4, 5, 6, 7],
                                                                                 "nodeB": [4, 5, 6, 7]}
    assert "--master_port=29500" in pdsh and "--master_addr=10.0.0.1" in pdsh


SHELL_SCRIPTS = ("ds_run_bf16.sh", "run_test.sh", "tuning/runtime/launch.sh", "tools/setup.sh", "tools/device_check.sh")


def _maybe_empty_arrays(text: str) -> set[str]:
    """Arrays of a script that can be empty: made empty, declared without elements, or filled by read -a or mapfile."""
    names = set(re.findall(r"\b(\w+)=\(\)", text))
    for declared in re.findall(r"\b(?:local|declare) -a ([\w ]+)$", text, re.MULTILINE):
        names |= set(declared.split())
    names |= set(re.findall(r"\bread [^<\n]*-a (\w+)", text))
    return names | set(re.findall(r"\bmapfile (?:-\S+ )*(\w+)", text))


def test_arrays_that_may_be_empty_are_expanded_safely_for_bash_before_4_4(repo_root):
    """Bash 4.3 and older (CentOS 7) stop at "${a[@]}" of an empty array under `set -u`; ${a[@]+"${a[@]}"} works in
    every version, so an array that can be empty is expanded only that way (its count ${#a[@]} is safe)."""
    problems = []
    for script in SHELL_SCRIPTS:
        text = (repo_root / script).read_text(encoding="utf-8")
        for name in _maybe_empty_arrays(text):
            for match in re.finditer(r"\$\{(#?)" + name + r"\[([@*])\](.)", text):
                guard = "${" + name + f"[{match.group(2)}]+"
                if match.group(1) == "#" or match.group(3) == "+":
                    continue  # the count, or the guard itself
                if not text[:match.start()].rstrip('"').endswith(guard):
                    problems.append(f"{script}:{text.count(chr(10), 0, match.start()) + 1}: {name}")
    assert problems == []


@pytest.mark.parametrize("count", [1, 2])
def test_device_check_adds_the_two_rank_zero2_run_where_there_are_two_devices(repo_root, tmp_path, count):
    """tools/device_check.sh with a stub interpreter that records each step: the 2-rank run only with 2 devices, and
    the report says what was skipped for lack of them."""
    record = tmp_path / "calls"
    python = _write_script(tmp_path / "python", f'printf "%s\\n" "$*" >>"{record}"\n'
                                                'case "$*" in\n'
                                                '    *version_problems*) ;;\n'
                                                '    "-m tuning.runtime.devices") echo "$FAKE_DEVICE" ;;\n'
                                                '    *detect_device*) echo "Fake GPU" ;;\n'
                                                'esac\n')
    env = {**os.environ, "PYTHON": str(python), "FAKE_DEVICE": f"cuda {count} nccl 1", "CHECK_DIR": str(tmp_path / "check"),
           "HOME": str(tmp_path), "SHARED_DIR": str(tmp_path / "shared")}
    for name in ("WAIMAI_DEVICE", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "WHEELS"):
        env.pop(name, None)
    result = subprocess.run(["bash", "tools/device_check.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    calls = record.read_text(encoding="utf-8").splitlines()
    pytest_runs = [call for call in calls if call.startswith("-m pytest")]
    assert pytest_runs[0].startswith("-m pytest -m accelerator -k not two_devices tests")
    (report,) = (tmp_path / "check").glob("*/report.md")
    text = report.read_text(encoding="utf-8")
    if count == 1:
        assert len(pytest_runs) == 1
        assert "- two_devices, the 2-rank ZeRO-2 run over nccl: this machine has 1 device" in text
    else:
        assert pytest_runs[1].startswith("-m pytest -m accelerator -k two_devices tests")
        assert "two_devices: exit 0" in text and "- none for lack of devices" in text


def test_the_launch_locks_its_output_folder_for_train_py_and_releases_it_at_the_end(repo_root, machine):
    result = _launch(repo_root, machine)
    assert result.returncode == 0, result.stderr
    token = _launcher_env(machine)["WAIMAI_LAUNCH_LOCK"]
    assert re.fullmatch(r"[0-9a-f]{16}", token)  # train.py's first process takes the lock over with it
    holder = json.loads((machine["record"] / "lock_at_launch").read_text(encoding="utf-8"))
    assert holder["token"] == token and holder["host"] == socket.gethostname()
    assert not (machine["root"] / "out" / ".run.lock").exists()


def test_a_second_launch_into_a_folder_in_use_stops_before_any_process_starts(repo_root, machine):
    output_dir = machine["root"] / "out"
    output_dir.mkdir()
    holder = start_lock_holder(output_dir / LOCK_NAME)
    assert holder.stdout.readline() == "held\n"
    try:
        result = _launch(repo_root, machine)
        on_node_1 = _launch(repo_root, machine, HOSTFILE=str(_two_nodes(machine)), NODE_RANK="1",
                            MASTER_ADDR="10.0.0.1")
    finally:
        holder.communicate("done\n", timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {output_dir} is in use by another training run (host {socket.gethostname()}, PID {holder.pid}, lock "
        "file .run.lock); wait for it to finish or choose another output folder"]
    # node 0's launch holds the lock for the machines that join it with their NODE_RANK
    assert on_node_1.returncode == 0, on_node_1.stderr
    assert _launcher_env(machine)["WAIMAI_LAUNCH_LOCK"] == "<unset>"


def _two_nodes(machine: dict) -> Path:
    hostfile = machine["root"] / "hostfile"
    hostfile.write_text("nodeA slots=8\nnodeB slots=8\n", encoding="utf-8")
    return hostfile


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system")
def test_deepspeeds_cpu_allreduce_buffers_of_the_launch_are_removed_at_the_end(repo_root, machine):
    """DeepSpeed's CPU processes leave a shared-memory buffer each, named after the master port; only the launch's
    own go."""
    port = _free_port()
    other_port = port - 1  # another launch's buffers: a name only
    ours = [Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_{rank}") for rank in (0, 1)]
    other = Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{other_port}_0")
    try:
        for path in (*ours, other):
            path.write_bytes(b"buffer")
        result = _launch(repo_root, machine, PYTHON=sys.executable, WAIMAI_DEVICE="cpu", MASTER_PORT=str(port))
        assert result.returncode == 0, result.stderr
        assert _launcher_args(machine)[:2] == ["--master_port", str(port)]
        assert [path.exists() for path in (*ours, other)] == [False, False, True]
    finally:
        for path in (*ours, other):
            path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
