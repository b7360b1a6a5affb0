"""Choosing the precision that fits (tuning/eval/precision.py, inference_setup), with faked memory figures."""

from pathlib import Path

import pytest
import torch

from tuning.eval import inference
from tuning.eval.precision import (
    FIXED_MARGIN,
    choose_dtype,
    fitting_batch_size,
    review_bytes,
)
from tuning.model.baichuan import BaichuanConfig
from tuning.runtime.devices import Device
from tuning.runtime.errors import DataError
from tuning.runtime.memory import Room

SEVEN_B = 7_505_973_248  # Baichuan2-7B's parameters: 30.0 GB in fp32, 15.0 GB in bf16
GB = 10**9
CPU, A100, V100 = Device("cpu", 1, False), Device("cuda", 1, True, (8, 0)), Device("cuda", 1, False, (7, 0))


def test_the_cpu_takes_fp32_when_it_fits():
    choice = choose_dtype("auto", CPU, SEVEN_B, Room(64 * GB, "MemAvailable"), "the model M")
    assert choice.dtype == torch.float32 and choice.note is None


def test_the_cpu_falls_back_to_bf16_with_a_note_saying_why():
    """The issue's machine: 24 GiB, of which about 22 GB available; the 7B needs 33 GB in fp32."""
    choice = choose_dtype("auto", CPU, SEVEN_B, Room(22 * GB, "cgroup limit"), "the model M")
    assert choice.dtype == torch.bfloat16
    assert choice.note == ("the model M needs 35.2 GB in fp32 (weights and working margin) but 22.0 GB is available "
                           "(cgroup limit): computing in bf16, which needs 18.7 GB")


def test_too_big_in_any_precision_is_refused_saying_what_is_needed():
    with pytest.raises(DataError) as refused:
        choose_dtype("auto", CPU, SEVEN_B, Room(12 * GB, "MemAvailable"), "the model M")
    assert str(refused.value) == (
        "the model M needs 18.7 GB in bf16 (15.0 GB of weights plus a working margin) but only 12.0 GB is available "
        "on this machine or its container limit (MemAvailable); nothing was loaded; free memory, or use a machine "
        "with at least 18.7 GB available")


def test_an_explicit_dtype_that_does_not_fit_names_the_one_that_would():
    with pytest.raises(DataError, match=r"in fp32 .* nothing was loaded; use --dtype bf16$"):
        choose_dtype("fp32", CPU, SEVEN_B, Room(22 * GB, "MemAvailable"), "the model M")
    assert choose_dtype("bf16", CPU, SEVEN_B, Room(64 * GB, "MemAvailable"), "M").dtype == torch.bfloat16


def test_accelerators_take_bf16_where_native_else_fp16():
    room = Room(80 * GB, "mem_get_info")
    assert choose_dtype("auto", A100, SEVEN_B, room, "M").dtype == torch.bfloat16
    assert choose_dtype("auto", V100, SEVEN_B, Room(32 * GB, "mem_get_info"), "M").dtype == torch.float16
    assert choose_dtype("auto", Device("npu", 8, False), SEVEN_B, room, "M").dtype == torch.float16  # Ascend 910A
    with pytest.raises(DataError, match="--dtype bf16: this cuda device has no native bf16; use --dtype fp16 or auto"):
        choose_dtype("bf16", V100, SEVEN_B, room, "M")


def test_an_accelerator_with_too_little_free_memory_is_refused():
    with pytest.raises(DataError, match=r"needs 18.7 GB in fp16 .* but only 16.0 GB is available on the cuda card "
                                         r"\(mem_get_info\); nothing was loaded; free memory, or use a "
                                         r"machine with at least 18.7 GB available on its card"):
        choose_dtype("auto", V100, SEVEN_B, Room(16 * GB, "mem_get_info"), "M")


def test_without_a_memory_figure_the_first_choice_is_taken():
    assert choose_dtype("auto", CPU, SEVEN_B, None, "M").dtype == torch.float32


def test_batch_size_is_cut_to_the_reviews_and_to_memory():
    config = BaichuanConfig(vocab_size=125696, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32)
    per_review = review_bytes(config, 300, torch.bfloat16)
    assert per_review == 300 * (2 * 32 * 4096 + 3 * 11008 + 32 * 300) * 2
    room = Room(SEVEN_B * 2 + FIXED_MARGIN + 5 * per_review + 1, "MemAvailable")
    assert fitting_batch_size(10**8, 200, 1, SEVEN_B, torch.bfloat16, None) == (200, None)  # the reviews, silently
    batch, note = fitting_batch_size(10**8, 200_000, per_review, SEVEN_B, torch.bfloat16, room)
    assert batch == 5 and note.startswith("--batch_size 100000000 cut to 5: more reviews per pass would not fit")
    assert fitting_batch_size(4, 200_000, per_review, SEVEN_B, torch.bfloat16, room) == (4, None)


@pytest.fixture
def fake_device(monkeypatch):
    """inference_setup on a faked device with faked memory, and a 7B-size parameter count per model folder."""
    def use(device: Device, room_bytes: int) -> None:
        monkeypatch.setattr(inference, "detect_device", lambda: device)
        monkeypatch.setattr(inference, "prepare_device", lambda device: None)
        monkeypatch.setattr(inference, "checkpoint_shapes", lambda folder: {"w": (SEVEN_B,)})
        monkeypatch.setattr(inference, "available_memory", lambda: Room(room_bytes, "MemAvailable"))
        monkeypatch.setattr(inference, "free_memory_bytes", lambda device: room_bytes)
    return use


def test_inference_setup_notes_the_cpu_fallback(fake_device, capsys):
    fake_device(CPU, 22 * GB)
    setup = inference.inference_setup("auto", [Path("base"), Path("tuned")])  # one at a time: one model's size
    assert setup.dtype == torch.bfloat16 and setup.parameters == SEVEN_B
    assert capsys.readouterr().err.startswith("note: the model base needs 35.2 GB in fp32")


def test_inference_setup_refuses_a_card_too_small_for_two_models_together(fake_device):
    fake_device(Device("cuda", 1, True, (8, 0)), 24 * GB)
    assert inference.inference_setup("auto", [Path("tuned")]).dtype == torch.bfloat16
    with pytest.raises(DataError, match=r"^tuned and base together needs 35.2 GB in bf16 .* 24.0 GB is available "
                                         r"on the cuda card"):
        inference.inference_setup("auto", [Path("tuned"), Path("base")], together=True)
