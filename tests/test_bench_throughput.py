"""bench/train_throughput.py and bench/eval_throughput.py on a tiny model and vocabulary (no ../shared needed)."""

import csv
import random
import re

import pytest
import torch

from bench import ceilings, eval_throughput, train_throughput
from bench.memory_plan import Shape
from transformers_modify.step_metrics import training_flops_per_token
from tuning.data.collate import PaddingCollator
from tuning.model.baichuan import BaichuanForCausalLM, tiny_config
from tuning.model.tiny import build_tiny_base
from tuning.runtime.devices import Device
from tuning.runtime.fileio import write_jsonl

POSITIVE = ["送餐很快", "味道不错", "分量很足", "包装很好", "服务好", "价格实惠", "下次还点"]
NEGATIVE = ["太慢了", "菜是凉的", "味道很差", "分量太少", "送错了", "再也不点了", "汤洒了"]
LAST_LINE = re.compile(r"^speedup_vs_original: (\d+\.\d+)$")
SAME_OPTIMIZATION = re.compile(r"^speedup_same_optimization: (\d+\.\d+)$")


def synthetic_records(count: int, seed: int = 0) -> list[dict]:
    """Reviews of 1 to 12 phrases, so that lengths (and padding) vary as in waimai_10k."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        positive = index % 3 != 0
        phrases = POSITIVE if positive else NEGATIVE
        review = "，".join(rng.choice(phrases) for _ in range(rng.randint(1, 12)))
        records.append({"review": review, "label": "积极" if positive else "消极"})
    return records


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    """train.jsonl, a waimai-style CSV, and a tiny random model folder whose tokenizer.model the train bench uses."""
    folder = tmp_path_factory.mktemp("bench")
    records = synthetic_records(120)
    write_jsonl(folder / "train.jsonl", records)
    with (folder / "waimai.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "review"])
        writer.writerows([1 if record["label"] == "积极" else 0, record["review"]] for record in records)
    build_tiny_base(folder / "train.jsonl", folder / "model")
    return folder


def run(main, argv: list[str], capsys) -> tuple[int, list[str], str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def table_row(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.split()[:1] == [name])


def test_train_throughput_reports_ratios_and_less_padding(bench_files, capsys):
    code, lines, err = run(train_throughput.main, [
        "--tokenizer", str(bench_files / "model" / "tokenizer.model"),
        "--data", str(bench_files / "train.jsonl"),
        "--configs", "original,ours,ours-larger-batch", "--larger_batch", "8", "--rounds", "1", "--steps", "1",
        "--max_length", "256",
    ], capsys)
    assert code == 0, err
    speedup = float(SAME_OPTIMIZATION.match(lines[-2]).group(1))
    assert speedup > 0
    assert lines[-1] == f"speedup_vs_original: {speedup:.2f}"
    text = "\n".join(lines)
    assert re.search(r"speedup per round \(ours / original, same optimisation\): \d+\.\d+$", text, re.MULTILINE)
    assert table_row(lines, "ours").split()[:6] == ["ours", "dynamic", "4x1", "yes", "labels", "yes"]
    assert table_row(lines, "original").split()[:6] == ["original", "max_length", "1x4", "no", "all", "yes"]
    assert table_row(lines, "ours-larger-batch").split()[5] == "no"  # a hyperparameter change, labelled as one
    assert "ours-larger-batch is a hyperparameter change" in text
    assert "ESTIMATES from datasheet figures" in text
    for device in ("Ascend 910B", "H100 SXM", "H200 SXM"):
        assert table_row(lines, device.split()[0])
    assert str(bench_files) not in text  # no absolute paths of the machine
    padding = {name: float(re.search(r"(\d+\.\d)%", table_row(lines, name)).group(1)) for name in ("original", "ours")}
    assert padding["original"] > padding["ours"]
    assert padding["original"] > 80  # the synthetic reviews are far shorter than 256 tokens
    assert "machine:" in lines[0] and any(line.startswith("command:") for line in lines)


def test_ours_is_the_same_optimisation_and_each_ablation_drops_exactly_one_change():
    setups = train_throughput.train_setups(larger_batch=16)
    ours, original = setups["ours"], setups["original"]
    assert (ours.padding, ours.group_by_length, ours.logits_at_labels_only) == ("dynamic", True, True)
    assert (original.padding, original.batch_size, original.accumulation) == ("max_length", 1, 4)
    assert (ours.batch_size, ours.accumulation) == (4, 1)  # the original's 4 samples per step, in one pass
    assert setups["ours-larger-batch"].samples_per_step == 16
    same = {name for name, setup in setups.items() if setup.samples_per_step == original.samples_per_step}
    assert same == set(setups) - {"ours-larger-batch"}
    changed = {
        "ours-no-dynamic-pad": {"padding", "group_by_length"},  # grouping means nothing when every row is padded
        "ours-no-grouping": {"group_by_length"},
        "ours-no-label-logits": {"logits_at_labels_only"},
        "ours-accumulated": {"batch_size", "accumulation"},
        "ours-larger-batch": {"batch_size"},
    }
    for name, fields in changed.items():
        fields_checked = ("padding", "batch_size", "accumulation", "group_by_length", "logits_at_labels_only")
        differing = {field for field in fields_checked if getattr(setups[name], field) != getattr(ours, field)}
        assert differing == fields, name


def test_length_grouping_covers_the_epoch_once_with_less_padding():
    rng = random.Random(1)
    lengths = [rng.randint(8, 300) for _ in range(1000)]
    features = [{"input_ids": [5] * length, "labels": [-100] * (length - 2) + [7, 2]} for length in lengths]
    setups = train_throughput.train_setups(larger_batch=16)
    share = {}
    for name in ("original", "ours-no-grouping", "ours"):
        collator = PaddingCollator(0, setups[name].padding, 1024)
        steps = train_throughput.epoch_steps(lengths, setups[name], seed=0)
        assert sorted(index for step in steps for batch in step for index in batch) == list(range(len(lengths)))
        counts = [train_throughput.collated_tokens([features[index] for index in batch], collator)
                  for step in steps for batch in step]
        share[name] = 1 - sum(real for real, _ in counts) / sum(padded for _, padded in counts)
    assert share["ours"] < share["ours-no-grouping"] / 3 < share["original"] / 3
    assert share["original"] == pytest.approx(1 - sum(lengths) / (1024 * len(lengths)))


def test_timed_steps_span_the_epoch_and_differ_between_rounds():
    steps = [[[index]] for index in range(100)]
    cost = list(range(100))
    rounds = train_throughput.pick_steps(steps, cost, count=2, rounds=2)
    chosen = sorted(step for round_steps in rounds for step in round_steps)
    assert chosen == [12, 37, 62, 87]
    assert set(rounds[0]).isdisjoint(rounds[1])


def test_train_throughput_bad_flags_are_one_line_errors(bench_files, tmp_path, capsys):
    code, _, err = run(train_throughput.main, ["--tokenizer", str(tmp_path / "missing.model")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--tokenizer" in err
    code, _, err = run(train_throughput.main, [
        "--tokenizer", str(bench_files / "model" / "tokenizer.model"), "--configs", "ours,fastest"], capsys)
    assert code == 2 and "fastest" in err and "ours-no-grouping" in err


def test_eval_throughput_compares_generation_with_scoring(bench_files, capsys):
    code, lines, err = run(eval_throughput.main, [
        "--model", str(bench_files / "model"), "--data", str(bench_files / "waimai.csv"),
        "--reviews", "8", "--rounds", "1", "--batch_size", "4",
    ], capsys)
    assert code == 0, err
    assert float(LAST_LINE.match(lines[-1]).group(1)) > 0
    agreement = next(line for line in lines if line.startswith("agreement:"))
    assert 0 <= float(re.search(r"(\d+\.\d)%", agreement).group(1)) <= 100
    assert "/8)" in agreement  # counted over the 8 reviews asked for
    assert agreement.endswith("predict.py gives label scoring's label on 8/8")
    for name in ("original", "ours", "predict.py"):
        assert float(table_row(lines, name).split()[-3]) > 0  # reviews/s


def test_eval_throughput_times_the_norm_head_cache_on_the_real_vocabulary(bench_files, baichuan_tokenizer_model,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr(eval_throughput, "default_tokenizer", lambda: baichuan_tokenizer_model)
    code, lines, err = run(eval_throughput.main, [
        "--norm_head_cache", "--data", str(bench_files / "waimai.csv"), "--reviews", "4", "--rounds", "1",
    ], capsys)
    assert code == 0, err
    assert "vocabulary 125,696" in next(line for line in lines if line.startswith("model:"))
    rows = [line.split() for line in lines if line.split()[:1] in (["scoring"], ["generation"])]
    assert [row[:2] for row in rows] == [[name, cache] for name in ("scoring", "generation")
                                         for cache in ("cached", "uncached")]
    speedups = re.match(r"^norm_head_cache_speedup: scoring (\d+\.\d+), generation (\d+\.\d+)$", lines[-1])
    assert speedups and all(float(value) > 0 for value in speedups.groups())


def test_eval_throughput_without_a_model_says_how_to_make_one(tmp_path, capsys):
    code, _, err = run(eval_throughput.main, ["--model", str(tmp_path / "tiny-tuned")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--model" in err and "ds_run_bf16.sh" in err


def test_report_ratios_and_mfu_on_an_accelerator():
    """On a GPU/NPU with a known peak the table gains an MFU column; ratios are samples/s over the original's."""
    setups = train_throughput.train_setups(larger_batch=16)
    chosen = [setups["original"], setups["ours"]]
    measured = {name: train_throughput.Measurement() for name in ("original", "ours")}
    for name, seconds, samples in (("original", 8.0, 4), ("ours", 2.0, 32)):
        for _ in range(2):
            measured[name].add({"seconds": seconds, "samples": samples, "real_tokens": samples * 25,
                                "flops": 1e14 * seconds / 4, "peak_memory": 2**30, "peak_flops": 1e15,
                                "parameters": 1000})
    args = train_throughput.parse_args(["--rounds", "2"])
    config = tiny_config(1000, 3, 4)
    lines = train_throughput.report(args, config, Device("cuda", 1, True), chosen, measured,
                                    {"original": 0.97, "ours": 0.07}, [25] * 100, ["ceilings: ..."])
    assert lines[-2:] == ["speedup_same_optimization: 32.00", "speedup_vs_original: 32.00"]  # (32 / 2) / (4 / 8)
    assert "ceilings: ..." in lines
    assert "speedup per round (ours / original, same optimisation): 32.00, 32.00" in lines
    header = next(line for line in lines if line.startswith("configuration"))
    assert header.split()[-1] == "MFU"
    assert table_row(lines, "ours").split()[-1] == "2.5%"  # 2.5e13 FLOP/s of a 1e15 peak
    assert "peak device memory allocated" in "\n".join(lines)


def test_ceiling_flops_match_the_training_logs_count_where_logits_are_everywhere():
    """With logits at every position the compute ceiling counts what the training log's MFU counts per token."""
    config = tiny_config(1000, 3, 4)
    with torch.device("meta"):
        model = BaichuanForCausalLM._from_config(config)
    shape = Shape.from_config(config)
    everywhere = ceilings.MicroBatch(rows=2, length=10, logit_positions=20)
    assert ceilings.micro_batch_flops(shape, everywhere) == pytest.approx(20 * training_flops_per_token(model)(10))
    at_answers = ceilings.MicroBatch(rows=2, length=10, logit_positions=4)
    saved = 16 * 6 * config.vocab_size * config.hidden_size  # the output head at the 16 non-answer positions
    assert ceilings.micro_batch_flops(shape, everywhere) - ceilings.micro_batch_flops(shape, at_answers) == saved


def test_step_ceiling_charges_a_reduce_scatter_per_micro_step_and_bounds_the_speedup():
    """ZeRO-2 reduce-scatters after every micro-step: the original's 1 x 4 pays it four times per optimizer step."""
    shape = Shape(vocab_size=125696, hidden_size=4096, intermediate_size=11008, num_layers=32)
    reviews = 320
    original = ceilings.Recipe([ceilings.MicroBatch(1, 1024, 1024)] * reviews, accumulation=4)
    ours = ceilings.Recipe([ceilings.MicroBatch(4, 30, 8)] * (reviews // 4), accumulation=1)
    assert original.optimizer_steps(8) == ours.optimizer_steps(8) == 10
    device = ceilings.Accelerator("test card", 400e12, 2e12, "link", 200e9)
    costs = ceilings.step_costs(shape, 8, device)
    assert costs.reduce_scatter > costs.weight_reads  # a 7B's gradients over a 200 GB/s link
    original_fixed = ceilings.epoch_seconds(original, shape, 8, device, tokens=False)
    ours_fixed = ceilings.epoch_seconds(ours, shape, 8, device, tokens=False)
    assert original_fixed - ours_fixed == pytest.approx(10 * 3 * costs.reduce_scatter)
    speedup = ceilings.epoch_seconds(original, shape, 8, device) / ceilings.epoch_seconds(ours, shape, 8, device)
    assert 1 < speedup <= ceilings.epoch_seconds(original, shape, 8, device) / ours_fixed
    assert speedup < original.flops(shape) / ours.flops(shape)  # the fixed costs hold it below the compute ceiling
    lines = ceilings.ceiling_lines(shape, 8, original, ours, 0.05, (device,))
    assert table_row(lines, "test") and "ESTIMATES" in lines[0] and "global batch 32" in lines[0]
