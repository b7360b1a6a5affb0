"""bench/memory_plan.py: parameter counts and activation formulas against our model (also with LoRA adapters), and
the plan's invariants."""

import contextlib
import re

import pytest
import torch

from bench import memory_plan
from tuning.model.baichuan import BaichuanConfig, BaichuanForCausalLM, tiny_config
from tuning.train.flags import LORA_LAYERS, LoraArguments
from tuning.train.lora import add_lora, parameter_counts

LENGTHS = memory_plan.SequenceLengths(mean=40, p95=90, max=200, target=2, source="test")


def small_plan(**overrides) -> memory_plan.Plan:
    settings = dict(devices=[1, 2, 8], batch_sizes=[1, 4], pad_to=1024)
    settings.update(overrides)
    return memory_plan.make_plan(memory_plan.Shape.from_config(BaichuanConfig()), LENGTHS, **settings)


def test_parameter_counts_match_the_7b_model():
    config = BaichuanConfig()
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    total = sum(parameter.numel() for parameter in model.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    assert memory_plan.Shape.from_config(config).parameter_counts() == (total, largest)
    assert total == 7_505_973_248 and largest == 125696 * 4096


def small_model(num_layers: int) -> BaichuanForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(300, 3, 4, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                         num_hidden_layers=num_layers)
    return BaichuanForCausalLM(config).to(torch.bfloat16).train()


SMALL_SHAPE = memory_plan.Shape(vocab_size=300, hidden_size=256, intermediate_size=688, num_layers=1)


def saved_activation_bytes(num_layers: int, batch: int, seq_len: int, lora: LoraArguments | None = None) -> int:
    """Bytes of the non-parameter tensors autograd saves in a bf16 training forward of a small Baichuan2; with `lora`,
    of the bf16 model with fp32 adapters under bf16 autocast, as the one-device LoRA recipe trains."""
    model = small_model(num_layers)
    if lora is not None:
        model = add_lora(model, lora, gradient_checkpointing=False).train()
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages = {}

    def keep(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    input_ids = torch.randint(5, 300, (batch, seq_len))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if lora is not None else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast:
        model(input_ids=input_ids, labels=input_ids)
    return sum(storages.values())


def test_layer_formula_matches_what_autograd_saves():
    batch, seq_len = 2, 48
    measured = saved_activation_bytes(2, batch, seq_len) - saved_activation_bytes(1, batch, seq_len)
    predicted = memory_plan.activations(SMALL_SHAPE, batch, seq_len, seq_len).layer
    assert measured == pytest.approx(predicted, rel=0.02)


@pytest.mark.parametrize("dropout, mask_bytes", [(0.05, 4), (0.0, 0)])  # the CPU's unfused dropout keeps a fp32 mask
def test_lora_layer_formula_matches_what_autograd_saves(dropout, mask_bytes):
    batch, seq_len, lora = 2, 48, LoraArguments(use_lora=True, lora_rank=8, lora_dropout=dropout)
    measured = saved_activation_bytes(2, batch, seq_len, lora) - saved_activation_bytes(1, batch, seq_len, lora)
    plan_lora = memory_plan.Lora(lora.lora_rank, LORA_LAYERS, mask_bytes)
    predicted = plan_lora.activations(SMALL_SHAPE, batch, seq_len, seq_len).layer
    assert measured == pytest.approx(predicted, rel=0.02)
    assert predicted > memory_plan.activations(SMALL_SHAPE, batch, seq_len, seq_len).layer


@pytest.mark.parametrize("target", [",".join(LORA_LAYERS), "W_pack"])
def test_lora_parameter_count_matches_peft(target):
    lora = LoraArguments(use_lora=True, lora_rank=8, lora_dropout=0.05, lora_target=target)
    trainable, _ = parameter_counts(add_lora(small_model(2), lora, gradient_checkpointing=False))
    shape = memory_plan.Shape(vocab_size=300, hidden_size=256, intermediate_size=688, num_layers=2)
    assert shape.lora_parameters(lora.lora_rank, tuple(lora.target_modules())) == trainable
    seven_b = memory_plan.Shape.from_config(BaichuanConfig())
    assert seven_b.lora_parameters(8, LORA_LAYERS) == 17_891_328  # the count train.py --help quotes
    assert seven_b.lora_parameters(8, LORA_LAYERS) == pytest.approx(4.27 * seven_b.lora_parameters(8, ("W_pack",)),
                                                                   rel=0.01)


def test_zero3_and_offload_lower_device_memory():
    states = small_plan().states
    for devices in (1, 2, 8):
        device = {name: states[name, devices][0] for name in memory_plan.STRATEGIES}
        assert device["ZeRO-2 + offload optimizer"] < device["ZeRO-2"]
        assert device["ZeRO-3 + offload optimizer"] < device["ZeRO-3"]
        assert device["ZeRO-3 + offload optimizer+params"] < device["ZeRO-3 + offload optimizer"]
        if devices > 1:
            assert device["ZeRO-3"] < device["ZeRO-2"]
    for name in ("ZeRO-2", "ZeRO-3"):
        assert states[name, 8][0] < states[name, 2][0] < states[name, 1][0]
    assert states["ZeRO-2 + offload optimizer", 8][1] > states["ZeRO-2", 1][1]  # offload moves memory to the host


def test_padding_and_batch_raise_activations_and_label_logits_lower_them():
    plan, labels_only = small_plan(), small_plan(logits_at_labels_only=True)
    for batch in (1, 4):
        assert plan.activations["pad 1024", batch].total > plan.activations["max", batch].total
        assert plan.activations["max", batch].total > plan.activations["mean", batch].total
        assert labels_only.activations["max", batch].total < plan.activations["max", batch].total
    assert plan.activations["max", 4].total > plan.activations["max", 1].total
    total = plan.total("ZeRO-2", 8, "pad 1024", 4)
    assert total == plan.states["ZeRO-2", 8][0] + plan.activations["pad 1024", 4].total + 2 * memory_plan.GIB


def test_lora_holds_the_frozen_bf16_weights_and_a_small_adapter():
    plan = small_plan()
    frozen, adapter = plan.lora.states(plan.shape)
    assert frozen == 2 * 7_505_973_248 and adapter == 16 * 17_891_328
    assert plan.lora_total("max", 4) == frozen + adapter + plan.lora_activations["max", 4].total + 2 * memory_plan.GIB
    for case in plan.cases:  # a fraction of full fine-tuning's states on 8 devices, the same activations and more
        assert plan.lora_total(case, 4) < plan.total("ZeRO-2", 8, case, 4)
        assert plan.lora_activations[case, 4].total > plan.activations[case, 4].total


def test_printed_fit_table_is_consistent(capsys):
    assert memory_plan.main(["--seq-lengths", "40,90,200", "--devices", "1,8", "--batch-sizes", "1,4"]) == 0
    output = capsys.readouterr().out
    assert "7,505,973,248 parameters" in output and "given with --seq-lengths" in output
    fits = re.findall(r"([\d.]+) \((\d+) GB\)", output)
    assert len(fits) > 10
    for total, card in fits:  # each total sits on the smallest card that holds it
        smaller = [size for size in (16, 24, 32, 64, 80) if size < int(card)]
        assert float(total) <= int(card) and all(float(total) > size for size in smaller)
    assert re.search(r"^ZeRO-2 +1 +[\d.]+ \(-\)", output, re.MULTILINE)  # 20 bytes per parameter: too big for one card


def test_printed_lora_rows_say_which_cards_fit(capsys):
    """The LoRA recipe's batch of 8 at the longest review fits a 24 GB card; the 14 GiB of bf16 weights leave a 16 GB
    card no room."""
    assert memory_plan.main(["--seq-lengths", "25,53,299", "--logits-at-labels-only"]) == 0
    output = capsys.readouterr().out
    lora = output[output.index("LoRA on one device"):]
    assert "17,891,328 adapter parameters (0.24%)" in lora and "= 14.25 GiB" in lora
    rows = [re.findall(r"\(([\d-]+)(?: GB)?\)", line) for line in lora.splitlines()
            if line.startswith(("mean", "p95", "max", "pad"))]
    assert rows == [["24", "24"]] * 4  # batch 1 and 8, with logits at the answer tokens as train.py computes them


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "waimai_10k.csv"
    assert memory_plan.main(["--csv", str(missing)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(missing) in error and "--seq-lengths" in error


def test_measured_lengths(tmp_path, baichuan_tokenizer_model):
    from tuning.data.prompt import PromptFormat
    from tuning.model.baichuan import BaichuanTokenizer

    reviews = ["好吃", "味道不错，送餐很快，下次还点", "太慢了"]
    csv_path = tmp_path / "waimai.csv"
    csv_path.write_text("label,review\n" + "".join(f"{i % 2},{text}\n" for i, text in enumerate(reviews)), "utf-8")
    prompt = PromptFormat.from_config(BaichuanConfig())
    tokenizer = BaichuanTokenizer(vocab_file=str(baichuan_tokenizer_model))
    expected = sorted(len(prompt.encode_example(tokenizer, text, "积极" if i % 2 else "消极", 1024).input_ids)
                      for i, text in enumerate(reviews))

    lengths = memory_plan.measure_lengths(csv_path, baichuan_tokenizer_model, prompt, 1024)
    assert (lengths.max, lengths.p95, lengths.target) == (expected[-1], expected[-1], 2)
    assert lengths.mean == -(-sum(expected) // len(expected))
