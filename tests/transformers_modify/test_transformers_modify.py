
import pytest

from transformers_modify import step_metrics, versions
from transformers_modify.step_metrics import StepMetricsCallback, peak_bf16_flops, training_flops_per_token
from transformers_modify.training_args import FORCE_CPU_BF16, adapt_to_device


def test_pins_come_from_requirements_txt():
    pins = versions.pinned_versions()
    assert pins["transformers"] == "5.24.0" and pins["deepspeed"] == "0.19.8" and pins["torch"] == "2.13.0"
    assert pins["peft"] == "0.21.2"


def test_pinned_environment_passes_and_a_mismatch_says_what_to_install(monkeypatch):
    assert versions.version_problems() == []
    pins = {**versions.pinned_versions(), "accelerate": "0.1.0"}
    monkeypatch.setattr(versions, "pinned_versions", lambda: pins)
    from tuning.runtime.errors import DataError
    from tuning.train.run import check_versions

    with pytest.raises(DataError) as error:
        check_versions()
    message = str(error.value)
    assert "\n" not in message
    assert message == f"accelerate {versions.installed_version('accelerate')} is installed but this project needs 0.1.0: " \
        "pip install accelerate==0.1.0"


def test_a_machines_own_torch_in_the_supported_range_is_accepted(monkeypatch):
    """A CUDA image with torch 2.11, transformers 5.17, no DeepSpeed and no peft: one problem per missing piece, not torch."""
    pins = versions.pinned_versions()
    installed = {"torch": "2.11.0+cu128", "transformers": "5.17.0", "accelerate": pins["accelerate"]}
    monkeypatch.setattr(versions, "installed_version", installed.get)
    assert versions.version_problems() == [
        f"transformers 5.17.0 is installed but this project needs {pins['transformers']}: "
        f"pip install transformers=={pins['transformers']}",
        f"deepspeed is not installed but this project needs {pins['deepspeed']}: "
        f"pip install deepspeed=={pins['deepspeed']}",
        f"peft is not installed but this project needs {pins['peft']}: pip install peft=={pins['peft']}",
    ]


@pytest.mark.parametrize("torch_version", ["2.5.1+cu124", "2.4.1", "2.14.0"])
def test_torch_outside_the_range_transformers_runs_on_is_refused(monkeypatch, torch_version):
    """transformers 5.24 disables itself on torch older than 2.6; 2.13 is the newest tested."""
    pins = versions.pinned_versions()
    installed = {"torch": torch_version, **{name: pins[name] for name in versions.EXACT}}
    monkeypatch.setattr(versions, "installed_version", installed.get)
    assert versions.version_problems() == [
        f"torch {torch_version} is installed but this project needs torch>=2.6,<2.14 (tested: {pins['torch']}): "
        f"pip install torch=={pins['torch']}"]


def _npu_machine(monkeypatch, torch_version: str, torch_npu_version: str) -> None:
    installed = {"torch": torch_version, "torch_npu": torch_npu_version,
                 **{name: versions.pinned_versions()[name] for name in versions.EXACT}}
    monkeypatch.setattr(versions, "installed_version", installed.get)


def test_torch_npu_must_match_torch_and_the_error_names_torch_npus_torch(monkeypatch):
    _npu_machine(monkeypatch, "2.13.0", "2.9.0.post2")  # torch replaced by the CPU pin: torch_npu's pair is broken
    assert versions.version_problems() == [
        "torch_npu 2.9.0.post2 does not match torch 2.13.0: pip install torch==2.9.0, the torch that torch_npu "
        "2.9.0.post2 was released for"]
    _npu_machine(monkeypatch, "2.9.0+cpu", "2.9.0.post2")  # the pair for CANN 9.0.0
    assert versions.version_problems() == []


def test_an_old_npu_pair_is_refused_naming_the_pair_for_the_installed_cann(monkeypatch, tmp_path):
    """torch 2.5.1 + torch_npu 2.5.1 passed the check before and failed inside transformers; never torch==2.13.0."""
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    (toolkit / "aarch64-linux").mkdir(parents=True)
    (toolkit / "aarch64-linux" / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.5.0\narch=aarch64\n", encoding="utf-8")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(toolkit))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    _npu_machine(monkeypatch, "2.5.1", "2.5.1.post1")
    assert versions.version_problems() == [
        "torch_npu 2.5.1.post1 is installed but this project needs torch and torch_npu >=2.6,<2.14 (transformers 5.24 "
        "needs torch 2.6 or later): install for CANN 8.5.0: pip install torch==2.9.0 torch_npu==2.9.0"]
    monkeypatch.delenv("ASCEND_HOME_PATH")
    (problem,) = versions.version_problems()
    assert "no CANN version found" in problem and "CANN 8.2.RC1: torch==2.6.0 torch_npu==2.6.0" in problem
    assert "CANN 9.1.0: torch==2.12.0 torch_npu==2.12.0" in problem and "2.13.0" not in problem


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312), ("Ascend910B2", 354), ("Tesla V100-SXM2-32GB", None), (None, None),
])
def test_peak_flops_table(name, tflops):
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_flops_per_token_counts_dense_weights_and_attention():
    from tuning.model.baichuan import BaichuanForCausalLM, tiny_config

    model = BaichuanForCausalLM(tiny_config(500, user_token_id=3, assistant_token_id=4))
    dense = model.num_parameters() - 500 * 128  # everything but the input embedding
    assert training_flops_per_token(model)(100) == 6 * dense + 12 * 2 * 128 * 100
    for name, parameter in model.named_parameters():  # as in a LoRA run: frozen weights need no weight gradient
        parameter.requires_grad_("o_proj" in name)
    trained = 2 * 128 * 128  # the two layers' o_proj
    assert training_flops_per_token(model)(100) == 4 * dense + 2 * trained + 12 * 2 * 128 * 100


def test_step_metrics_window(monkeypatch):
    """Two 2 s steps and a 5 s evaluation between them: the window's time is the steps', its tokens the trainer's."""
    clock = iter([10.0, 12.0, 17.0, 19.0, 19.0])  # window start, step end, evaluation end, step end, log
    monkeypatch.setattr(step_metrics.time, "perf_counter", lambda: next(clock))
    callback = StepMetricsCallback(lambda: None, lambda length: 1000.0 * length, sequences_per_step=4, world_size=2,
                                   peak_flops=1e6)
    callback.on_step_begin(None, None, None)
    callback.on_step_end(None, None, None)
    callback.on_evaluate(None, None, None)
    callback.on_step_begin(None, None, None)  # inside the window: no clock read, no synchronisation
    callback.on_step_end(None, None, None)
    metrics = callback.pop_window(tokens=800)
    assert metrics["step_time_s"] == 2.0 and metrics["tokens_per_s"] == 200.0
    # 100 tokens per sequence -> 1e5 FLOPs per token; 200 tokens/s over 2 devices of 1 MFLOP/s each
    assert metrics["mfu"] == pytest.approx(200 * 1e5 / 2e6)
    assert callback.pop_window(tokens=0) == {}  # the window restarts


def _values(**overrides) -> dict:
    return dict(fp16=False, bf16=True, tf32=None, deepspeed=None, use_cpu=False, accelerator_config=None,
                optim="adamw_torch_fused") | overrides


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_cpu_trains_in_fp32_with_or_without_bf16_instructions_and_says_so(monkeypatch, native_bf16):
    monkeypatch.delenv(FORCE_CPU_BF16, raising=False)
    values = _values(tf32=True)
    notes = adapt_to_device(values, "cpu", native_bf16=native_bf16)
    assert (values["bf16"], values["fp16"], values["use_cpu"], values["tf32"]) == (False, False, True, None)
    assert any("training in fp32" in text for text in notes)
    assert any("--tf32 applies to NVIDIA GPUs only" in text for text in notes)


def test_cpu_bf16_can_be_forced(monkeypatch):
    monkeypatch.setenv(FORCE_CPU_BF16, "1")
    values = _values()
    notes = adapt_to_device(values, "cpu", native_bf16=False)
    assert values["bf16"] and values["use_cpu"]
    assert any("emulated and very slow" in text for text in notes)


def test_bf16_on_an_accelerator_without_it_becomes_fp16_with_a_note():
    values = _values()
    notes = adapt_to_device(values, "cuda", native_bf16=False)
    assert (values["bf16"], values["fp16"]) == (False, True)
    assert notes == ["this cuda device has no native bf16: training in fp16 with loss scaling "
                     "(`bash ds_run_bf16.sh --bf16 false --fp16 true` says so yourself)"]


def test_the_recipes_fused_adamw_is_torchs_on_every_device():
    for kind in ("npu", "cuda", "cpu"):
        values = _values()
        adapt_to_device(values, kind, native_bf16=True)
        assert values["optim"] == "adamw_torch_fused"


def test_torch_npus_fused_adamw_is_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        adapt_to_device(_values(optim="adamw_torch_npu_fused"), "npu", native_bf16=True)
    assert "\n" not in str(error.value) and "KeyError 'step' under ZeRO" in str(error.value)
    assert "use adamw_torch_fused" in str(error.value)
