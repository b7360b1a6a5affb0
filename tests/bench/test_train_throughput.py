"""bench/train_throughput.py on a tiny model and vocabulary (no ../shared needed)."""

import random
import re

import pytest
from throughput_inputs import run, table_row, write_bench_files

from bench import train_throughput
from tuning.data.collate import PaddingCollator
from tuning.model.baichuan import tiny_config
from tuning.runtime.devices import Device

SAME_OPTIMIZATION = re.compile(r"^speedup_same_optimization: (\d+\.\d+)$")


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    return write_bench_files(tmp_path_factory.mktemp("bench"))


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
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --tokenizer")
    code, _, err = run(train_throughput.main, [
        "--tokenizer", str(bench_files / "model" / "tokenizer.model"), "--configs", "ours,fastest"], capsys)
    assert code == 2 and "fastest" in err and "ours-no-grouping" in err


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
                                    {"original": 0.97, "ours": 0.07}, [25] * 100)
    assert lines[-2:] == ["speedup_same_optimization: 32.00", "speedup_vs_original: 32.00"]  # (32 / 2) / (4 / 8)
    assert "speedup per round (ours / original, same optimisation): 32.00, 32.00" in lines
    header = next(line for line in lines if line.startswith("configuration"))
    assert header.split()[-1] == "MFU"
    assert table_row(lines, "ours").split()[-1] == "2.5%"  # 2.5e13 FLOP/s of a 1e15 peak
    assert "peak device memory allocated" in "\n".join(lines)
