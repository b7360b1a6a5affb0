import json
import subprocess
import sys

import pytest

import make_data
from tuning.data.waimai_csv import OUTPUT_FILES


def run_make_data(repo_root, *args, cwd=None):
    return subprocess.run(
        [sys.executable, str(repo_root / "make_data.py"), *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def small_csv(path, extra=""):
    rows = [f"1,好吃{i}" for i in range(5)] + [f"0,难吃{i}" for i in range(5)]
    path.write_text("label,review\n" + "\n".join(rows) + "\n" + extra, encoding="utf-8")
    return path


def output_bytes(folder):
    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES}


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_data.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--csv", "--download", "--url", "--output_dir", "--seed", "--train_size", "--eval_ratio"):
        assert flag in text
    assert "waimai_10k" in text and "stratified" in text


def test_default_paths_are_inside_the_repository(repo_root):
    args = make_data.parse_args([])
    assert args.csv == repo_root / "data" / "waimai_10k.csv"
    assert args.output_dir == repo_root / "data"


def test_real_file_end_to_end_is_byte_identical_across_runs(repo_root, waimai_csv, tmp_path, capsys):
    result = run_make_data(repo_root, "--csv", waimai_csv, "--output_dir", tmp_path / "first")
    assert result.returncode == 0, result.stderr
    assert "train     10000 rows: 积极 3335 (33.4%), 消极 6665 (66.6%)" in result.stdout
    assert "eval       1973 rows: 积极 658 (33.4%), 消极 1315 (66.6%)" in result.stdout
    assert "(the published waimai_10k.csv)" in result.stdout
    assert make_data.main(["--csv", str(waimai_csv), "--output_dir", str(tmp_path / "second")]) == 0
    assert output_bytes(tmp_path / "first") == output_bytes(tmp_path / "second")

    lines = (tmp_path / "first" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1973
    assert set(json.loads(lines[0])) == {"review", "label"}
    assert "\\u" not in lines[0]  # Chinese written as is
    stats = json.loads((tmp_path / "first" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 11973 and stats["split"] == {"seed": 42, "rule": "train_size 10000"}

    assert make_data.main(["--csv", str(waimai_csv), "--output_dir", str(tmp_path / "other"), "--seed", "7"]) == 0
    assert output_bytes(tmp_path / "other")["train.jsonl"] != output_bytes(tmp_path / "first")["train.jsonl"]


def test_user_paths_are_relative_to_the_current_directory(repo_root, tmp_path):
    small_csv(tmp_path / "in.csv")
    result = run_make_data(repo_root, "--csv", "in.csv", "--output_dir", "out", "--eval_ratio", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "split by eval_ratio 0.2" in result.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("7,还行\n", "error: {csv}: line 12: label must be 0 or 1, found '7'\n"),
        ("1,好,吃\n", "error: {csv}: line 12: 3 fields, the header has 2 (quote a review that contains commas)\n"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_keeps_old_outputs(repo_root, tmp_path, extra, message):
    csv_path = small_csv(tmp_path / "in.csv", extra)
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("old\n", encoding="utf-8")
    result = run_make_data(repo_root, "--csv", csv_path, "--output_dir", out)
    assert result.returncode == 2
    assert result.stderr == message.format(csv=csv_path)
    assert result.stdout == ""
    assert all((out / name).read_text(encoding="utf-8") == "old\n" for name in OUTPUT_FILES)
    assert len(list(out.iterdir())) == len(OUTPUT_FILES)


def test_missing_csv_says_how_to_get_it_and_writes_nothing(repo_root, tmp_path):
    result = run_make_data(repo_root, "--csv", tmp_path / "nope.csv", "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.csv'}: file not found;")
    assert "--download" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine", encoding="utf-8")
    dest = tmp_path / "data" / "waimai_10k.csv"
    for folder, problem in [(taken, f"{taken} is a file, not a folder"),
                            (taken / "sub", f"{taken} is a file, not a folder")]:
        argv = ["--download", "--url", "file:///nonexistent.csv", "--csv", str(dest), "--output_dir", str(folder)]
        assert make_data.main(argv) == 2
        assert capsys.readouterr().err == f"error: --output_dir {folder}: {problem}\n"
    assert taken.read_text(encoding="utf-8") == "mine" and not dest.exists()  # nothing downloaded
    (tmp_path / "out" / "stats.json").mkdir(parents=True)
    assert make_data.main(["--csv", str(small_csv(tmp_path / "in.csv")), "--output_dir", str(tmp_path / "out")]) == 2
    assert "out/stats.json is a folder, where the file stats.json goes" in capsys.readouterr().err


def test_one_class_only_exits_2(tmp_path, capsys):
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("label,review\n1,好\n1,棒\n", encoding="utf-8")
    assert make_data.main(["--csv", str(csv_path), "--output_dir", str(tmp_path / "out")]) == 2
    assert "only label 1 (积极) is left" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags", [["--eval_ratio", "1.5"], ["--train_size", "0"], ["--train_size", "5", "--eval_ratio", "0.2"]]
)
def test_bad_flags_are_usage_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_data.parse_args(flags)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_download_keeps_the_file_only_when_the_hash_matches(waimai_csv, tmp_path, capsys):
    dest = tmp_path / "data" / "waimai_10k.csv"
    out = tmp_path / "out"
    wrong = small_csv(tmp_path / "wrong.csv")
    assert make_data.main(["--download", "--url", wrong.as_uri(), "--csv", str(dest), "--output_dir", str(out)]) == 2
    assert "is not the expected b8b5c11c00b5" in capsys.readouterr().err
    assert not dest.exists() and not out.exists()

    argv = ["--download", "--url", waimai_csv.as_uri(), "--csv", str(dest), "--output_dir", str(out)]
    assert make_data.main(argv) == 0
    assert "(sha256 verified)" in capsys.readouterr().out
    assert dest.read_bytes() == waimai_csv.read_bytes()
    assert (out / "train.jsonl").is_file()
