"""bench/eval_throughput.py on a tiny model (no ../shared needed)."""

import re

import pytest
from throughput_inputs import run, table_row, write_bench_files

from bench import eval_throughput

LAST_LINE = re.compile(r"^speedup_vs_original: (\d+\.\d+)$")


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    return write_bench_files(tmp_path_factory.mktemp("bench"))


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
    for name in ("original", "ours", "predict.py", "predict.py-bf16"):
        assert float(table_row(lines, name).split()[-3]) > 0  # reviews/s
    bf16 = next(line for line in lines if line.startswith("predict_bf16_vs_fp32: "))  # the CPU's fallback, priced
    assert float(bf16.split()[1]) > 0 and bf16.endswith("/8)")


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
