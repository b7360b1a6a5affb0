import errno
import hashlib
import json
import os

import pytest

from tuning.runtime.errors import DataError
from tuning.runtime.fileio import (
    atomic_writer,
    atomic_writers,
    is_disk_full,
    move_files,
    read_json,
    read_jsonl,
    sha256_of,
    sha256_of_files,
    write_jsonl,
)


def test_atomic_writer_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as handle:
            handle.write("half")
            raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_jsonl_roundtrip_keeps_chinese_as_is(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"review": "很好吃", "label": "积极"}])
    assert "很好吃" in path.read_text(encoding="utf-8")
    assert read_jsonl(path, ("review", "label")) == [{"review": "很好吃", "label": "积极"}]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"review": "a", "label": "积极"}\n{broken\n', "bad.jsonl:2: not valid JSON"),
        ('[1, 2]\n', "bad.jsonl:1: expected a JSON object"),
        (json.dumps({"review": "a"}) + "\n", "bad.jsonl:1: missing key(s) label"),
        ("\n", "bad.jsonl: no records"),
    ],
)
def test_read_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jsonl(path, ("review", "label"))


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_atomic_writers_replace_all_files_or_none(tmp_path):
    first, second = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    first.write_text("old train\n", encoding="utf-8")
    second.write_text("old eval\n", encoding="utf-8")
    with pytest.raises(OSError):
        with atomic_writers([first, second]) as (train, eval_):
            train.write("new train\n")
            raise OSError("disk full")
    assert first.read_text(encoding="utf-8") == "old train\n"
    assert second.read_text(encoding="utf-8") == "old eval\n"
    with atomic_writers([first, second]) as (train, eval_):
        train.write("new train\n")
        eval_.write("new eval\n")
    assert first.read_text(encoding="utf-8") == "new train\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "train.jsonl"]


def test_written_files_get_the_usual_permissions(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    reference = tmp_path / "plain"
    reference.write_text("x")
    assert (tmp_path / "a.jsonl").stat().st_mode == reference.stat().st_mode


def test_read_json_names_the_file_when_it_is_broken(tmp_path):
    path = tmp_path / "run_manifest.json"
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(DataError, match=r"run_manifest.json: not valid JSON"):
        read_json(path)
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_json(path)
    with pytest.raises(DataError, match="file not found"):
        read_json(tmp_path / "absent.json")


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"waimai" * 1000)
    assert sha256_of(path) == hashlib.sha256(b"waimai" * 1000).hexdigest()


def test_moved_files_are_one_saves_once_the_last_is_there(tmp_path, monkeypatch):
    old, new = tmp_path / "run", tmp_path / "staging"
    old.mkdir()
    new.mkdir()
    for name in ("config.json", "model.safetensors"):
        (old / name).write_text("old", encoding="utf-8")
        (new / name).write_text("new", encoding="utf-8")
    seen = []
    real_replace = os.replace

    def watch(source, target):  # what a reader finds before each rename
        seen.append((old / "config.json").is_file() and (old / "model.safetensors").read_text(encoding="utf-8"))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watch)
    move_files(new, old, last="config.json")
    assert seen == [False, False]  # the old config.json is gone while the new files come in
    assert {path.name: path.read_text(encoding="utf-8") for path in old.iterdir()} == {
        "config.json": "new", "model.safetensors": "new"}


def test_sha256_of_files_covers_every_file_below_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.pt").write_bytes(b"a")
    (tmp_path / "record.json").write_bytes(b"{}")
    assert sha256_of_files(tmp_path, exclude="record.json") == {"sub/a.pt": hashlib.sha256(b"a").hexdigest()}


def test_a_full_disk_is_recognised_in_every_form_a_writer_reports_it():
    safetensors_error = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as error:
            raise RuntimeError("saving failed") from error
    except RuntimeError as chained:
        assert is_disk_full(chained)
    assert is_disk_full(safetensors_error) and is_disk_full(RuntimeError("basic_ios::clear: iostream error"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("x"))
