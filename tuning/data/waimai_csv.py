"""waimai_10k.csv -> cleaned, deduplicated, seeded stratified train/eval records; and its verified download."""

import csv
import hashlib
import http.client
import io
import random
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuning.data.prompt import LABEL_WORDS
from tuning.runtime.errors import DataError
from tuning.runtime.fileio import atomic_writer, atomic_writers, dump_json, dump_jsonl, sha256_of

SOURCE_PAGE = "https://github.com/SophonPlus/ChineseNlpCorpus (datasets/waimai_10k)"
DOWNLOAD_URL = "https://raw.githubusercontent.com/SophonPlus/ChineseNlpCorpus/master/datasets/waimai_10k/waimai_10k.csv"
WAIMAI_SHA256 = "b8b5c11c00b51578d35937fca56e03a126b45381f1ea4b22893237cb377a26fe"
COLUMNS = ("label", "review")
SMALL_FILE_EVAL_RATIO = 0.2  # the original recipe: 80% train when there are no more rows than --train_size
OUTPUT_FILES = ("train.jsonl", "eval.jsonl", "stats.json")
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Row:
    label: int
    review: str


@dataclass(frozen=True)
class Dataset:
    train: list[dict]
    eval: list[dict]
    stats: dict


def fetch_csv(dest: str | Path, url: str = DOWNLOAD_URL, sha256: str = WAIMAI_SHA256, timeout: float = 60.0) -> bool:
    """Download `url` to `dest`, saved only when its SHA-256 matches; False when `dest` already is that file."""
    dest = Path(dest)
    if dest.exists():
        found = sha256_of(dest)
        if found == sha256:
            return False
        raise DataError(f"{dest}: already exists and is not the expected file (sha256 {found}); "
                        "move it away or pass another --csv")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_writer(dest, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256:
                raise DataError(f"{url}: sha256 {digest.hexdigest()} is not the expected {sha256}; nothing was saved")
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: download failed (HTTP {error.code} {error.reason})") from None
    except urllib.error.URLError as error:
        raise DataError(f"{url}: download failed ({error.reason})") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise DataError(f"{url}: download failed ({error!r})") from None
    return True


def decode_csv(path: Path, raw: bytes) -> tuple[str, str]:
    """The file's text and encoding: UTF-8 (with or without BOM), else GB18030 (which also reads GBK and GB2312).

    A file with a BOM, or whose non-ASCII lines are mostly UTF-8, is UTF-8: a line that is not is an error naming it.
    GB18030 decodes almost any bytes, so reading such a file as GB18030 would garble every review without an error.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: the file is UTF-16; save it as UTF-8 CSV")
    has_bom = raw.startswith(UTF8_BOM)
    body = raw[len(UTF8_BOM):] if has_bom else raw
    try:
        return body.decode("utf-8"), "utf-8 (BOM)" if has_bom else "utf-8"
    except UnicodeDecodeError as error:
        line = body[: error.start].count(b"\n") + 1
        where, byte = f"{path}: line {line}", f"byte 0x{body[error.start]:02x}"
    if has_bom or _mostly_utf8(body):
        raise DataError(f"{where}: not UTF-8 text ({byte}), unlike the rest of the file; save the file as UTF-8")
    try:
        return body.decode("gb18030"), "gb18030"
    except UnicodeDecodeError:
        raise DataError(f"{where}: neither UTF-8 nor GB18030 text ({byte}); save the file as UTF-8") from None


def _mostly_utf8(raw: bytes) -> bool:
    """At least half of the lines with non-ASCII bytes are valid UTF-8 (GBK text almost never is)."""
    non_ascii = [line for line in raw.split(b"\n") if not line.isascii()]
    return 2 * sum(_is_utf8(line) for line in non_ascii) >= len(non_ascii)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def clean_review(text: str) -> str:
    """Drop control and format characters (a line break or tab becomes a space) and strip surrounding whitespace."""
    if not text.isprintable():
        text = "".join(clean_char(char) for char in text)
    return text.strip()


def clean_char(char: str) -> str:
    category = unicodedata.category(char)
    if category in ("Cc", "Zl", "Zp"):
        return " " if char.isspace() else ""
    return "" if category == "Cf" else char


def read_rows(path: str | Path) -> tuple[list[Row], dict]:
    """Parse and validate the CSV; return its cleaned rows (empty reviews dropped) and what reading did."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; waimai_10k.csv is published at {SOURCE_PAGE}, "
                        "and `python make_data.py --download` fetches it")
    raw = path.read_bytes()
    text, encoding = decode_csv(path, raw)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    rows, rows_read, empty, changed = [], 0, 0, 0
    for line, (label_text, raw_review) in csv_records(path, text, COLUMNS):
        rows_read += 1
        label = parse_label(path, line, label_text)
        review = clean_review(raw_review)
        changed += review != raw_review
        if review:
            rows.append(Row(label, review))
        else:
            empty += 1
    if not rows_read:
        raise DataError(f"{path}: no data rows under the header")
    stats = {
        "path": str(path),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "encoding": encoding,
        "rows_read": rows_read,
        "reviews_cleaned": changed,
        "empty_review": empty,
    }
    return rows, stats


def csv_records(path: Path, text: str, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, the fields of `columns`) for each non-blank row; header names match in any case and spacing.

    A missing column (the columns found are listed), a column named twice, a row with another field count than the
    header or bad quoting is a DataError naming the file and line.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        names = [name.strip().lower() for name in header]
        missing = [column for column in columns if column not in names]
        if missing:
            found = ", ".join(repr(name) for name in header)
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found columns: {found}")
        for column in columns:
            places = [str(place) for place, name in enumerate(names, start=1) if name == column]
            if len(places) > 1:
                raise DataError(f"{path}: column {column!r} appears {len(places)} times in the header (columns "
                                f"{', '.join(places)}); keep one")
        positions = [names.index(column) for column in columns]
        line = reader.line_num + 1
        for fields in reader:
            if any(field.strip() for field in fields):
                if len(fields) != len(header):
                    raise DataError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)} "
                                    "(quote a review that contains commas)")
                yield line, [fields[position] for position in positions]
            line = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num}: bad CSV ({error})") from None


def parse_label(path: Path, line: int, value: str) -> int:
    value = value.strip()
    if value not in ("0", "1"):
        raise DataError(f"{path}: line {line}: label must be 0 or 1, found {value[:20]!r}")
    return int(value)


def deduplicate(rows: list[Row]) -> tuple[list[Row], int, int]:
    """Keep each (label, review) once and drop reviews that occur with both labels; return rows and both counts."""
    first_seen: dict[tuple[int, str], Row] = {}
    for row in rows:
        first_seen.setdefault((row.label, row.review), row)
    unique = list(first_seen.values())
    labels_per_review = Counter(row.review for row in unique)
    kept = [row for row in unique if labels_per_review[row.review] == 1]
    return kept, len(rows) - len(unique), len(unique) - len(kept)


def train_count(total: int, train_size: int, eval_ratio: float | None) -> tuple[int, str]:
    """How many rows go to training, and the rule that decided it."""
    if eval_ratio is not None:
        return total - round(total * eval_ratio), f"eval_ratio {eval_ratio}"
    if total > train_size:
        return train_size, f"train_size {train_size}"
    rule = f"80% train ({total} rows, not more than train_size {train_size})"
    return total - round(total * SMALL_FILE_EVAL_RATIO), rule


def stratified_split(path: Path, rows: list[Row], n_train: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Seeded split keeping each label's share in both parts (largest-remainder rounding); both parts shuffled."""
    by_label = {label: [row for row in rows if row.label == label] for label in LABEL_WORDS}
    exact = {label: n_train * len(group) / len(rows) for label, group in by_label.items()}
    quota = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(LABEL_WORDS, key=lambda label: quota[label] - exact[label])
    for label in by_remainder[: n_train - sum(quota.values())]:
        quota[label] += 1
    if any(not 0 < quota[label] < len(group) for label, group in by_label.items()):
        counts = ", ".join(f"{len(by_label[label])} {word}" for label, word in LABEL_WORDS.items())
        raise DataError(f"{path}: too small to split: {len(rows)} usable rows ({counts}) into {n_train} train "
                        f"and {len(rows) - n_train} eval would leave a split without one of the labels; "
                        "use a bigger file or change --train_size/--eval_ratio")
    rng = random.Random(seed)
    train, evaluation = [], []
    for label, group in by_label.items():
        rng.shuffle(group)
        train += group[: quota[label]]
        evaluation += group[quota[label]:]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def label_counts(rows: list[Row]) -> dict:
    counts = Counter(row.label for row in rows)
    return {"rows": len(rows), **{word: counts[label] for label, word in LABEL_WORDS.items()}}


def build_dataset(path: str | Path, seed: int = 42, train_size: int = 10000,
                  eval_ratio: float | None = None) -> Dataset:
    """Read, clean, validate, deduplicate and split the CSV; everything is checked before anything is written."""
    path = Path(path)
    rows, stats = read_rows(path)
    rows, duplicates, conflicting = deduplicate(rows)
    present = {row.label for row in rows}
    if len(present) < 2:
        only = ", ".join(f"{label} ({LABEL_WORDS[label]})" for label in present) or "none"
        raise DataError(f"{path}: after cleaning only label {only} is left ({len(rows)} rows); need both 0 and 1")
    n_train, rule = train_count(len(rows), train_size, eval_ratio)
    train, evaluation = stratified_split(path, rows, n_train, seed)
    stats.update(
        dropped={"empty_review": stats.pop("empty_review"), "duplicate": duplicates, "conflicting_labels": conflicting},
        rows_kept=len(rows),
        split={"seed": seed, "rule": rule},
        train=label_counts(train),
        eval=label_counts(evaluation),
    )
    return Dataset(to_records(train), to_records(evaluation), stats)


def to_records(rows: list[Row]) -> list[dict]:
    return [{"review": row.review, "label": LABEL_WORDS[row.label]} for row in rows]


def write_dataset(dataset: Dataset, output_dir: str | Path) -> list[Path]:
    """Write train.jsonl, eval.jsonl and stats.json together: all three are replaced, or none."""
    paths = [Path(output_dir) / name for name in OUTPUT_FILES]
    with atomic_writers(paths) as (train, evaluation, stats):
        dump_jsonl(dataset.train, train)
        dump_jsonl(dataset.eval, evaluation)
        dump_json(dataset.stats, stats)
    return paths
