import hashlib
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuning.data.waimai_csv import (
    OUTPUT_FILES,
    WAIMAI_SHA256,
    Row,
    build_dataset,
    clean_review,
    deduplicate,
    fetch_csv,
    train_count,
    write_dataset,
)
from tuning.runtime.errors import DataError

CONTRADICTED = ["味道还可以。", "不错很好吃", "就是有点慢", "不怎么好吃", "送的挺快的", "速度有点慢", "还是不错的"]


def write_csv(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def balanced_csv(rows_per_label=5):
    lines = ["label,review"]
    lines += [f"1,好吃{i}" for i in range(rows_per_label)] + [f"0,难吃{i}" for i in range(rows_per_label)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def real_dataset(waimai_csv):
    return build_dataset(waimai_csv)


def test_real_file_counts(real_dataset):
    stats = real_dataset.stats
    assert stats["sha256"] == WAIMAI_SHA256
    assert stats["rows_read"] == 11987
    assert stats["dropped"] == {"empty_review": 0, "duplicate": 0, "conflicting_labels": 14}
    assert stats["rows_kept"] == 11973
    assert stats["train"] == {"rows": 10000, "积极": 3335, "消极": 6665}
    assert stats["eval"] == {"rows": 1973, "积极": 658, "消极": 1315}
    assert len(real_dataset.train) == 10000 and len(real_dataset.eval) == 1973


def test_real_file_split_is_stratified_disjoint_and_shuffled(real_dataset):
    positive_share = 3993 / 11973
    for records in (real_dataset.train, real_dataset.eval):
        positives = sum(record["label"] == "积极" for record in records)
        assert abs(positives - positive_share * len(records)) <= 1
        assert {record["label"] for record in records[:20]} == {"积极", "消极"}  # not sorted by label
    train_reviews = {record["review"] for record in real_dataset.train}
    eval_reviews = {record["review"] for record in real_dataset.eval}
    assert len(train_reviews) == 10000 and len(eval_reviews) == 1973
    assert not train_reviews & eval_reviews
    assert not (train_reviews | eval_reviews) & set(CONTRADICTED)


def test_real_file_cleaning_removes_control_chars_and_keeps_private_use_emoji(real_dataset):
    reviews = [record["review"] for record in real_dataset.train + real_dataset.eval]
    assert not any("\x08" in review for review in reviews)
    assert sum(review.startswith("早上9点订的，下午1点多才送到。") for review in reviews) == 1
    assert sum("\ue412" in review or "\ue420" in review for review in reviews) == 2


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("\x08早上好", "早上好"),
        ("  很好吃 \n", "很好吃"),
        ("第一行\n第二行\t完", "第一行 第二行 完"),
        ("零\u200b宽\ufeff", "零宽"),
        ("\u3000好吃\u3000不贵\u3000", "好吃\u3000不贵"),
        ("活久见\ue412", "活久见\ue412"),
        ("\x07\x1b", ""),
    ],
)
def test_clean_review(raw, cleaned):
    assert clean_review(raw) == cleaned


def test_deduplicate_keeps_first_copy_and_drops_reviews_with_both_labels():
    rows = [Row(1, "好"), Row(1, "好"), Row(0, "差"), Row(1, "一般"), Row(0, "一般"), Row(0, "一般")]
    rows.append(Row(1, "棒"))
    kept, duplicates, conflicting = deduplicate(rows)
    assert kept == [Row(1, "好"), Row(0, "差"), Row(1, "棒")]
    assert (duplicates, conflicting) == (2, 2)


@pytest.mark.parametrize(
    "total, train_size, eval_ratio, expected",
    [(11973, 10000, None, 10000), (10000, 10000, None, 8000), (50, 10000, None, 40), (11973, 10000, 0.1, 10776)],
)
def test_train_count_rules(total, train_size, eval_ratio, expected):
    assert train_count(total, train_size, eval_ratio)[0] == expected


def test_split_depends_on_seed_only(tmp_path):
    csv_path = write_csv(tmp_path / "in.csv", balanced_csv(30))
    first, again, other = (build_dataset(csv_path, seed=seed) for seed in (1, 1, 2))
    assert first == again
    assert first.train != other.train
    assert first.stats["train"] == {"rows": 48, "积极": 24, "消极": 24}


def test_quoted_reviews_bom_and_multiline_rows(tmp_path):
    text = 'label,review\n1,"好吃,实惠"\n0,"他说""难吃""\n真的"\n1,不错\n0,太慢\n'
    csv_path = write_csv(tmp_path / "in.csv", "\ufeff" + text)
    dataset = build_dataset(csv_path, eval_ratio=0.5)
    reviews = {record["review"] for record in dataset.train + dataset.eval}
    assert reviews == {"好吃,实惠", '他说"难吃" 真的', "不错", "太慢"}
    assert dataset.stats["encoding"] == "utf-8 (BOM)"


def test_gb18030_file_is_detected_and_read(tmp_path):
    csv_path = write_csv(tmp_path / "gbk.csv", balanced_csv(), encoding="gbk")
    dataset = build_dataset(csv_path)
    assert dataset.stats["encoding"] == "gb18030"
    assert {record["review"] for record in dataset.train + dataset.eval} == {
        *(f"好吃{i}" for i in range(5)),
        *(f"难吃{i}" for i in range(5)),
    }


def test_empty_reviews_are_dropped_and_counted(tmp_path):
    csv_path = write_csv(tmp_path / "in.csv", balanced_csv() + '1,\n0,"  \x08 "\n,\n')
    stats = build_dataset(csv_path).stats
    assert stats["rows_read"] == 12  # the all-empty "," line is a blank line, not a row
    assert stats["dropped"]["empty_review"] == 2
    assert stats["rows_kept"] == 10


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "in.csv: the file is empty"),
        ("label,review\n", "in.csv: no data rows under the header"),
        ("id,text,score\n1,好,5\n", "in.csv: missing column(s) label, review; found columns: 'id', 'text', 'score'"),
        ("label,text\n1,好\n", "in.csv: missing column(s) review; found columns: 'label', 'text'"),
        (balanced_csv() + "2,还行\n", "in.csv: line 12: label must be 0 or 1, found '2'"),
        ('label,review\n1,"跨\n行"\n1,好\n0,差\n正面,不错\n', "in.csv: line 6: label must be 0 or 1, found '正面'"),
        (balanced_csv() + "1,好,吃\n", "in.csv: line 12: 3 fields, the header has 2"),
        ("label,review\n1,好\n1,棒\n1,赞\n", "in.csv: after cleaning only label 1 (积极) is left (3 rows)"),
        ("label,review\n1,好\n1,好\n0,好\n0,差\n", "in.csv: after cleaning only label 0 (消极) is left"),
        ("label,review\n1,好\n1,棒\n0,差\n", "in.csv: too small to split: 3 usable rows (2 积极, 1 消极)"),
        ('label,review\n1,"好"吃\n', "in.csv: line 2: bad CSV"),
    ],
)
def test_bad_input_names_file_row_and_problem(tmp_path, text, message):
    csv_path = write_csv(tmp_path / "in.csv", text)
    with pytest.raises(DataError) as error:
        build_dataset(csv_path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: file not found; .*SophonPlus/ChineseNlpCorpus.*--download"):
        build_dataset(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "raw, message",
    [
        ("label,review\n1,好\n".encode("utf-16"), "the file is UTF-16; save it as UTF-8 CSV"),
        (b"label,review\n1,ok\n0,\x80\xff\n", "line 3: neither UTF-8 nor GB18030 text (byte 0x80)"),
    ],
)
def test_undecodable_file_is_refused(tmp_path, raw, message):
    csv_path = tmp_path / "in.csv"
    csv_path.write_bytes(raw)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_dataset(csv_path)


def mixed_encoding_csv(bom: bytes = b"") -> bytes:
    """Six UTF-8 reviews, then one line in Latin-1 (which as a whole happens to decode as GB18030)."""
    utf8 = balanced_csv(3).encode("utf-8")
    return bom + utf8 + "1,Crème brûlée was great\n".encode("latin-1")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_utf8_file_with_one_line_in_another_encoding_is_refused_at_that_line(tmp_path, bom):
    raw = mixed_encoding_csv(bom)
    raw.decode("gb18030")  # what made the whole file pass as GB18030, every review garbled
    csv_path = tmp_path / "in.csv"
    csv_path.write_bytes(raw)
    with pytest.raises(DataError) as error:
        build_dataset(csv_path)
    assert str(error.value) == (f"{csv_path}: line 8: not UTF-8 text (byte 0xe8), unlike the rest of the file; "
                                "save the file as UTF-8")


@pytest.mark.parametrize("header", ["label,review,label", "label,review,Label ", "review,label,REVIEW"])
def test_a_column_named_twice_is_refused(tmp_path, header):
    csv_path = write_csv(tmp_path / "in.csv", header + "\n" + "\n".join(f"1,好吃{i},0" for i in range(4)) + "\n")
    column = header.split(",")[0]
    with pytest.raises(DataError) as error:
        build_dataset(csv_path)
    assert str(error.value) == f"{csv_path}: column {column!r} appears 2 times in the header (columns 1, 3); keep one"


def test_too_large_train_size_names_the_flags(tmp_path):
    csv_path = write_csv(tmp_path / "in.csv", balanced_csv())
    with pytest.raises(DataError, match="change --train_size/--eval_ratio"):
        build_dataset(csv_path, train_size=9)


def test_write_dataset_replaces_all_files_or_none(tmp_path, monkeypatch):
    dataset = build_dataset(write_csv(tmp_path / "in.csv", balanced_csv()))
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("old\n", encoding="utf-8")

    def fail(payload, handle):
        raise OSError("disk full")

    monkeypatch.setattr("tuning.data.waimai_csv.dump_json", fail)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(dataset, out)
    assert sorted(path.name for path in out.iterdir()) == sorted(OUTPUT_FILES)
    assert all((out / name).read_text(encoding="utf-8") == "old\n" for name in OUTPUT_FILES)

    monkeypatch.undo()
    write_dataset(dataset, out)
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8 and '"label": "积极"' in "".join(lines) and Counter(lines).most_common(1)[0][1] == 1


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving files from tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_saves_the_file_only_when_the_hash_matches(tmp_path, http_server):
    served, base_url = http_server
    payload = balanced_csv().encode("utf-8")
    (served / "waimai.csv").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "data" / "waimai.csv"

    with pytest.raises(DataError, match=f"waimai.csv: sha256 {good} is not the expected {'0' * 64}; nothing was saved"):
        fetch_csv(dest, f"{base_url}/waimai.csv", sha256="0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    assert fetch_csv(dest, f"{base_url}/waimai.csv", sha256=good) is True
    assert dest.read_bytes() == payload
    assert fetch_csv(dest, f"{base_url}/waimai.csv", sha256=good) is False  # already there: nothing fetched


def test_download_errors_are_one_line(tmp_path, http_server):
    _, base_url = http_server
    with pytest.raises(DataError, match=r"missing\.csv: download failed \(HTTP 404 File not found\)"):
        fetch_csv(tmp_path / "out.csv", f"{base_url}/missing.csv")
    assert not (tmp_path / "out.csv").exists()


def test_download_never_replaces_a_different_existing_file(tmp_path, http_server):
    served, base_url = http_server
    (served / "waimai.csv").write_bytes(b"label,review\n")
    dest = write_csv(tmp_path / "mine.csv", balanced_csv())
    with pytest.raises(DataError, match="mine.csv: already exists and is not the expected file"):
        fetch_csv(dest, f"{base_url}/waimai.csv", sha256=hashlib.sha256(b"label,review\n").hexdigest())
    assert dest.read_text(encoding="utf-8") == balanced_csv()


def test_download_from_file_url(tmp_path):
    source = write_csv(tmp_path / "source.csv", balanced_csv())
    dest = tmp_path / "copy.csv"
    assert fetch_csv(dest, source.as_uri(), sha256=hashlib.sha256(source.read_bytes()).hexdigest())
    assert dest.read_bytes() == source.read_bytes()
