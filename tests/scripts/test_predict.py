"""predict.py on a tiny model tuned by train.py: the same answers as run_test's label scoring, every input, bad input."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import ONE_PROCESS_FLAGS, write_sharded_bin

import predict
import run_test
from tuning.data.encode import answer_word
from tuning.eval import inference, precision, predicting
from tuning.eval.evaluate import EvalSettings, encode_eval_data, evaluate_model, prompt_settings
from tuning.eval.inference import load_for_inference
from tuning.eval.metrics import classification_metrics
from tuning.eval.predicting import Classifier
from tuning.eval.scoring import candidate_ids, label_log_probs
from tuning.model.baichuan import load_config, load_tokenizer
from tuning.runtime.devices import Device, compute_dtype, detect_device
from tuning.runtime.fileio import read_jsonl, write_jsonl
from tuning.runtime.memory import Room
from tuning.runtime.paths import REPO_ROOT
from tuning.train.run import main as train_main

TEMPLATE = "外卖评论：{review} -> "
LABEL_WORDS = ("好", "差")  # one token each, so that a cut prompt is the same whichever answer follows
MAX_LENGTH = 40  # short enough that some eval reviews are cut


@pytest.fixture(scope="module")
def trained(make_review_data, make_tiny_base, tmp_path_factory) -> dict:
    """24 steps of train.py (enough to answer both labels) with a non-default template, label words and length: a run folder with its manifest."""
    data_dir = make_review_data(train_per_label=24, eval_per_label=12)
    base = make_tiny_base(data_dir, vocab_size=1000)
    run = tmp_path_factory.mktemp("predict") / "run"
    code = train_main([
        *ONE_PROCESS_FLAGS, "--model_name_or_path", str(base), "--train_data", str(data_dir / "train.jsonl"), "--eval_data", "",
        "--output_dir", str(run), "--max_steps", "24", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--prompt_template", TEMPLATE, "--label_words", ",".join(LABEL_WORDS),
        "--model_max_length", str(MAX_LENGTH), "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true",
    ])
    assert code == 0
    eval_file = data_dir / "eval.jsonl"
    return {"run": run, "eval": eval_file, "reviews": [record["review"] for record in read_jsonl(eval_file)]}


def predict_main(argv: list[str], monkeypatch, capsys, stdin: bytes = b"") -> tuple[int, list[dict], str]:
    """predict.py in this process: exit code, the JSON lines it printed, its stderr."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = predict.main(argv)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_accuracy_equals_run_tests_label_scoring(trained, monkeypatch, capsys):
    code, records, err = predict_main(["--model", str(trained["run"]), "--input", str(trained["eval"])],
                                      monkeypatch, capsys)
    assert code == 0, err
    assert [record["review"] for record in records] == trained["reviews"]
    assert {record["label"] for record in records} <= set(LABEL_WORDS)  # the training run's words, not 积极/消极
    gold = [answer_word(record["label"], LABEL_WORDS) for record in read_jsonl(trained["eval"])]
    predicted = [record["label"] for record in records]

    # run_test cuts a long review to leave room for its gold answer, predict.py for the longest label word.
    tokenizer = load_tokenizer(trained["run"])
    assert [len(tokenizer.encode(word, add_special_tokens=False)) for word in LABEL_WORDS] == [1, 1]
    prompt, _, _ = prompt_settings({}, trained["run"])
    assert prompt == {"prompt_template": TEMPLATE, "label_words": ",".join(LABEL_WORDS), "model_max_length": MAX_LENGTH}
    settings = EvalSettings(batch_size=4, max_new_tokens=1, max_samples=None, **prompt)
    evaluation = evaluate_model(trained["run"], trained["eval"], detect_device(), torch.float32, settings)
    ours = classification_metrics(gold, predicted, LABEL_WORDS)
    assert set(predicted) == set(LABEL_WORDS)  # the model answers both, so equal accuracy is no coincidence
    assert ours["accuracy"] == evaluation.scoring["accuracy"]
    assert ours["confusion_matrix"] == evaluation.scoring["confusion_matrix"]

    # and review by review: the probability is the softmax of run_test's label scores of the same prompts
    _, prompt_format, split = encode_eval_data(trained["run"], trained["eval"], settings)
    model = load_for_inference(trained["run"], detect_device(), torch.float32)
    candidates = candidate_ids(prompt_format, tokenizer)
    scores = label_log_probs(model, split.prompts(), candidates, model.config.pad_token_id, batch_size=4)
    expected = scores.softmax(-1).max(-1).values.tolist()
    assert [record["probability"] for record in records] == pytest.approx(expected, abs=1e-4)
    assert evaluation.truncated_prompts > 0
    assert f"cut {evaluation.truncated_prompts} reviews longer than model_max_length {MAX_LENGTH}" in err


def test_arguments_stdin_and_files_give_the_same_answers(trained, tmp_path, monkeypatch, capsys):
    reviews = trained["reviews"][:5]
    model = ["--model", str(trained["run"])]
    code, from_arguments, _ = predict_main([*model, *reviews], monkeypatch, capsys)
    assert code == 0
    assert [record["review"] for record in from_arguments] == reviews
    lines = "\n".join([reviews[0], "", *reviews[1:], "  "]) + "\n"
    code, from_stdin, err = predict_main(model, monkeypatch, capsys, stdin=lines.encode("utf-8"))
    assert code == 0 and "skipped 2 empty reviews" in err

    (tmp_path / "in.txt").write_text(lines, encoding="utf-8")
    write_jsonl(tmp_path / "in.jsonl", [{"id": index, "review": review} for index, review in enumerate(reviews)])
    with (tmp_path / "in.csv").open("w", encoding="gb18030", newline="") as handle:  # as Excel saves it in China
        writer = csv.writer(handle)
        writer.writerow(["id", " Review "])
        writer.writerows(enumerate(reviews))
    outputs = {}
    for name in ("in.txt", "in.jsonl", "in.csv"):
        code, outputs[name], err = predict_main([*model, "--input", str(tmp_path / name)], monkeypatch, capsys)
        assert code == 0, err
    assert from_stdin == from_arguments
    assert all(output == from_arguments for output in outputs.values())

    for name in ("out.jsonl", "out.csv"):
        code, printed, err = predict_main([*model, "--output", str(tmp_path / name), *reviews], monkeypatch, capsys)
        assert code == 0 and printed == [] and f"wrote {tmp_path / name}" in err
    assert read_jsonl(tmp_path / "out.jsonl") == from_arguments
    with (tmp_path / "out.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = [row | {"probability": float(row["probability"])} for row in csv.DictReader(handle)]
    assert rows == from_arguments
    assert not list(tmp_path.glob(".*.tmp"))


def test_order_is_kept_across_length_sorted_batches(trained):
    reviews = sorted(trained["reviews"][:9], key=len)
    mixed = [reviews[index] for index in (4, 0, 8, 1, 7, 2, 6, 3, 5)]  # short and long interleaved
    classifier = Classifier.load(trained["run"], detect_device(), torch.float32, batch_size=2)
    together = classifier.classify(mixed)
    alone = [classifier.classify([review]) for review in mixed]
    assert [record["review"] for record in together.records] == mixed
    assert [record["label"] for record in together.records] == [single.records[0]["label"] for single in alone]
    expected = torch.cat([single.probabilities for single in alone])
    torch.testing.assert_close(together.probabilities, expected, atol=1e-4, rtol=0)


def test_probabilities_are_a_softmax_over_the_label_words(trained):
    classifier = Classifier.load(trained["run"], detect_device(), torch.float32)
    predictions = classifier.classify(trained["reviews"])
    assert predictions.probabilities.shape == (len(trained["reviews"]), len(LABEL_WORDS))
    torch.testing.assert_close(predictions.probabilities.sum(-1), torch.ones(len(trained["reviews"])))
    for record, row in zip(predictions.records, predictions.probabilities):
        assert record["label"] == LABEL_WORDS[int(row.argmax())]
        assert record["probability"] == round(float(row.max()), 4) >= 0.5


def test_the_default_model_is_the_latest_tuned_run(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predicting, "default_run_dirs", lambda lora: [tmp_path / "baichuan2-7b-waimai", trained["run"]])
    monkeypatch.delenv("USE_LORA", raising=False)
    code, records, err = predict_main(["好吃"], monkeypatch, capsys)
    assert code == 0 and records[0]["label"] in LABEL_WORDS
    assert f"model {trained['run']} (cpu, float32)" in err


def test_use_lora_takes_the_merged_model_of_the_lora_run(trained, tmp_path, monkeypatch, capsys):
    """USE_LORA=true: the folders `USE_LORA=true bash ds_run_bf16.sh` trains into, never a full run's model."""
    monkeypatch.setattr(predicting, "default_run_dirs", lambda lora: [tmp_path / f"baichuan2-7b-waimai{'-lora' * lora}",
                                                                tmp_path / f"tiny-tuned{'-lora' * lora}"])
    shutil.copytree(trained["run"], tmp_path / "tiny-tuned")
    shutil.copytree(trained["run"], tmp_path / "tiny-tuned-lora")  # stands in for a LoRA run's merged model
    monkeypatch.setenv("USE_LORA", "true")
    code, records, err = predict_main(["好吃"], monkeypatch, capsys)
    assert code == 0 and records[0]["label"] in LABEL_WORDS
    assert f"model {tmp_path / 'tiny-tuned-lora'} (cpu" in err
    shutil.rmtree(tmp_path / "tiny-tuned-lora")
    code, _, err = predict_main(["好吃"], monkeypatch, capsys)
    assert code == 2 and err == (f"error: no tuned model in {tmp_path / 'baichuan2-7b-waimai-lora'} or "
                                 f"{tmp_path / 'tiny-tuned-lora'}; train one with `bash ds_run_bf16.sh`, or pass --model\n")
    monkeypatch.setenv("USE_LORA", "maybe")
    code, _, err = predict_main(["好吃"], monkeypatch, capsys)
    assert code == 2 and err == "error: USE_LORA=maybe: expected true or false\n"


def test_the_cpu_computes_in_fp32_even_with_native_bf16(trained, tmp_path, monkeypatch, capsys):
    assert compute_dtype(Device("cpu", 1, bf16=True), want_bf16=True) == torch.float32
    assert compute_dtype(Device("cuda", 1, bf16=True), want_bf16=True) == torch.bfloat16
    assert compute_dtype(Device("cuda", 1, bf16=True), want_bf16=False) == torch.float32
    bf16_cpu = Device("cpu", 1, bf16=True)
    monkeypatch.setattr(inference, "detect_device", lambda: bf16_cpu)
    code, _, err = predict_main(["--model", str(trained["run"]), "好吃"], monkeypatch, capsys)
    assert code == 0 and "(cpu, float32)" in err
    output_dir = tmp_path / "outputs"
    assert run_test.main(["--base_model", str(trained["run"]), "--tuned_model", str(trained["run"]),
                          "--eval_data", str(trained["eval"]), "--max_samples", "2", "--num_examples", "1",
                          "--max_new_tokens", "1", "--output_dir", str(output_dir), "--other_base"]) == 0
    assert json.loads((output_dir / "eval_results.json").read_text(encoding="utf-8"))["dtype"] == "float32"


BAD_INPUTS = {
    "missing file": ("--input", "{tmp}/absent.jsonl", "error: --input {tmp}/absent.jsonl: file not found"),
    "empty file": ("--input", "{tmp}/empty.txt", "error: --input {tmp}/empty.txt: the file is empty"),
    "blank reviews only": ("--input", "{tmp}/blank.csv", "error: --input {tmp}/blank.csv: no reviews (2 empty)"),
    "csv without a review column": (
        "--input", "{tmp}/columns.csv",
        "error: {tmp}/columns.csv: missing column(s) review; found columns: 'id', 'text'"),
    "neither UTF-8 nor GB18030": (
        "--input", "{tmp}/binary.csv", "error: {tmp}/binary.csv: line 2: neither UTF-8 nor GB18030 text (byte 0xff)"),
    "UTF-16 text": ("--input", "{tmp}/utf16.txt", "error: {tmp}/utf16.txt: the file is UTF-16"),
    "a UTF-8 file with one Latin-1 line": (
        "--input", "{tmp}/mixed.txt", "error: {tmp}/mixed.txt: line 3: not UTF-8 text (byte 0xe8), unlike the rest"),
    "csv with the review column twice": (
        "--input", "{tmp}/twice.csv",
        "error: {tmp}/twice.csv: column 'review' appears 2 times in the header (columns 1, 2); keep one"),
    "JSONL not in UTF-8": (
        "--input", "{tmp}/gbk.jsonl", "error: --input {tmp}/gbk.jsonl: line 1: not UTF-8 text (byte 0xba)"),
    "JSONL without review": ("--input", "{tmp}/other.jsonl", "error: {tmp}/other.jsonl:1: missing key(s) review"),
    "unknown input kind": ("--input", "{tmp}/reviews.xlsx", "error: --input {tmp}/reviews.xlsx: the name must end in"),
    "no such model": ("--model", "{tmp}/no-model", "error: --model {tmp}/no-model: not found; train one with "
                                                   "`bash ds_run_bf16.sh` or give another folder"),
    "folder without a model": ("--model", "{tmp}/empty-run", "error: --model {tmp}/empty-run: no model "
                                                            "(config.json and weights) and no complete checkpoint-N"),
    "model without tokenizer": ("--model", "{tmp}/no-tokenizer", "error: model folder {tmp}/no-tokenizer has no "
                                                                 "tokenizer.model"),
}


@pytest.fixture
def bad_files(trained, tmp_path) -> Path:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.csv").write_text("id,review\n1, \n2,\"\t\"\n", encoding="utf-8")
    (tmp_path / "columns.csv").write_text("id,text\n1,好吃\n", encoding="utf-8")
    (tmp_path / "binary.csv").write_bytes(b"review\n\xff\xfe\xfd\n")
    (tmp_path / "utf16.txt").write_bytes("好吃\n".encode("utf-16"))
    (tmp_path / "mixed.txt").write_bytes("好吃\n太慢了\n".encode() + "Crème brûlée was great\n".encode("latin-1"))
    (tmp_path / "twice.csv").write_text("review,Review\n好吃,难吃\n", encoding="utf-8")
    (tmp_path / "gbk.jsonl").write_bytes('{"review": "好吃"}\n'.encode("gbk"))
    (tmp_path / "other.jsonl").write_text('{"text": "好吃"}\n', encoding="utf-8")
    (tmp_path / "reviews.xlsx").write_bytes(b"PK")
    (tmp_path / "empty-run" / "checkpoint-2").mkdir(parents=True)  # an interrupted save
    shutil.copytree(trained["run"], tmp_path / "no-tokenizer", ignore=shutil.ignore_patterns("tokenizer.model"))
    return tmp_path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_and_writes_nothing(trained, bad_files, monkeypatch, capsys, case):
    flag, value, message = BAD_INPUTS[case]
    value = value.format(tmp=bad_files)
    flags = [flag, value] if flag == "--model" else ["--model", str(trained["run"]), flag, value]
    output = bad_files / "out.jsonl"
    code, printed, err = predict_main([*flags, "--output", str(output)], monkeypatch, capsys)
    assert code == 2 and printed == []
    assert len(err.strip().splitlines()) == 1 and err.startswith(message.format(tmp=bad_files)), err
    assert not output.exists() and not list(bad_files.glob(".out.jsonl.*"))


def test_other_mistakes_are_one_line_errors(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predicting, "default_run_dirs", lambda lora: [tmp_path / "baichuan2-7b-waimai", tmp_path / "tiny-tuned"])
    monkeypatch.delenv("USE_LORA", raising=False)
    cases = [
        (["好吃"], f"error: no tuned model in {tmp_path / 'baichuan2-7b-waimai'} or {tmp_path / 'tiny-tuned'}; "
                   "train one with `bash ds_run_bf16.sh`, or pass --model"),
        (["--model", str(trained["run"]), "--input", str(trained["eval"]), "好吃"],
         "error: give reviews as arguments or with --input FILE, not both"),
        (["--model", str(trained["run"]), "--output", str(tmp_path / "out.txt"), "好吃"],
         f"error: --output {tmp_path / 'out.txt'}: the name must end in .jsonl or .csv"),
        (["--model", str(trained["run"])], "error: no reviews on stdin (2 empty lines)"),
    ]
    for argv, message in cases:
        code, printed, err = predict_main(argv, monkeypatch, capsys, stdin=b"\n \n")
        assert (code, printed, err) == (2, [], message + "\n")
    assert not (tmp_path / "out.txt").exists()


def test_command_line_reads_stdin_and_prints_json_lines(trained):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), "--model", str(trained["run"])],
        input="\n".join(trained["reviews"][:3]) + "\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["review"] for record in records] == trained["reviews"][:3]
    assert all(set(record) == {"review", "label", "probability"} for record in records)


@pytest.mark.parametrize("link", ["the same path", "a symlink", "a hard link"])
def test_the_output_is_never_the_input(trained, tmp_path, monkeypatch, capsys, link):
    reviews = tmp_path / "r.jsonl"
    write_jsonl(reviews, [{"id": index, "review": review} for index, review in enumerate(trained["reviews"][:3])])
    before = reviews.read_bytes()
    output = {"the same path": reviews, "a symlink": tmp_path / "link.jsonl", "a hard link": tmp_path / "hard.jsonl"}[link]
    if link == "a symlink":
        output.symlink_to(reviews)
    elif link == "a hard link":
        output.hardlink_to(reviews)
    code, printed, err = predict_main(["--model", str(trained["run"]), "--input", str(reviews), "--output",
                                       str(output)], monkeypatch, capsys)
    assert (code, printed) == (2, [])
    assert err == (f"error: --output {output}: is the input file {reviews} (or a link to it), which it would "
                   "replace; choose another name\n")
    assert reviews.read_bytes() == before


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(trained, tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(predicting.Classifier, "load", no_loading)
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    cases = {
        tmp_path / "folder.jsonl": "is a folder; name a .jsonl or .csv file",
        tmp_path / "a-file" / "out.csv": f"{tmp_path / 'a-file'} is not a folder",
    }
    for output, problem in cases.items():
        code, printed, err = predict_main(["--model", str(trained["run"]), "--output", str(output), "好吃"],
                                          monkeypatch, capsys)
        assert (code, printed, err) == (2, [], f"error: --output {output}: {problem}\n")


def test_a_huge_batch_size_is_cut_to_what_fits(trained, monkeypatch, capsys):
    reviews = trained["reviews"][:6]
    model = ["--model", str(trained["run"])]
    _, expected, _ = predict_main([*model, *reviews], monkeypatch, capsys)
    code, records, err = predict_main([*model, "--batch_size", "100000000", *reviews], monkeypatch, capsys)
    assert code == 0 and "--batch_size" not in err  # no more than the 6 reviews per pass: nothing to say
    assert records == expected

    # room for the fp32 weights, the fixed margin and two reviews of MAX_LENGTH tokens (an upper bound) at a time
    parameters = inference.inference_setup("auto", [trained["run"]]).parameters
    per_review = precision.review_bytes(load_config(trained["run"]), MAX_LENGTH, torch.float32)
    room = parameters * 4 + precision.FIXED_MARGIN + 2 * per_review
    monkeypatch.setattr(inference, "available_memory", lambda: Room(room, "MemAvailable"))
    code, records, err = predict_main([*model, "--batch_size", "100000000", *reviews], monkeypatch, capsys)
    assert code == 0 and records == expected
    cut = [line for line in err.splitlines() if line.startswith("note: --batch_size 100000000 cut to ")]
    assert len(cut) == 1 and "would not fit beside the weights" in cut[0]
    assert 2 <= int(cut[0].split()[5].rstrip(":")) < len(reviews)


def test_the_cpu_falls_back_to_bf16_or_refuses_before_loading(trained, monkeypatch, capsys):
    setup = inference.inference_setup("auto", [trained["run"]])
    fp32, bf16 = (precision.needed_bytes(setup.parameters, dtype) for dtype in (torch.float32, torch.bfloat16))
    model = ["--model", str(trained["run"])]
    monkeypatch.setattr(inference, "available_memory", lambda: Room(fp32 - 1, "cgroup limit"))
    code, records, err = predict_main([*model, "好吃"], monkeypatch, capsys)
    assert code == 0 and records[0]["label"] in LABEL_WORDS
    assert f"note: the model {trained['run']} needs " in err and "computing in bf16" in err
    assert "(cpu, bfloat16)" in err

    def no_loading(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(predicting.Classifier, "load", no_loading)
    monkeypatch.setattr(inference, "available_memory", lambda: Room(bf16 - 1, "cgroup limit"))
    code, printed, err = predict_main([*model, "好吃"], monkeypatch, capsys)
    assert (code, printed) == (2, [])
    assert err.startswith(f"error: the model {trained['run']} needs ") and "nothing was loaded" in err
    assert len(err.splitlines()) == 1


def test_dtype_flag_picks_the_precision(trained, monkeypatch, capsys):
    code, records, err = predict_main(["--model", str(trained["run"]), "--dtype", "bf16", "好吃"], monkeypatch, capsys)
    assert code == 0 and "(cpu, bfloat16)" in err and records[0]["label"] in LABEL_WORDS


def test_an_official_layout_with_bin_shards_and_an_index_loads(trained, tmp_path, monkeypatch, capsys):
    """pytorch_model-0000N-of-0000M.bin + pytorch_model.bin.index.json, as the official Baichuan2-7B release."""
    official = sharded_copy(trained["run"], tmp_path / "official")
    capsys.readouterr()
    code, records, err = predict_main(["--model", str(official), *trained["reviews"][:3]], monkeypatch, capsys)
    assert code == 0, err
    _, expected, _ = predict_main(["--model", str(trained["run"]), *trained["reviews"][:3]], monkeypatch, capsys)
    assert records == expected
    assert err.count("note: loading") == 1 and "2 weight files" in err


def sharded_copy(model_dir: Path, target: Path) -> Path:
    """The model saved again as two .bin shards and an index, beside its config, tokenizer and run files."""
    model = load_for_inference(model_dir, detect_device(), torch.float32)
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*"))
    write_sharded_bin(model.state_dict(), target, shards=2)
    return target


def test_a_truncated_weight_file_is_one_line(trained, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained["run"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, printed, err = predict_main(["--model", str(broken), "好吃"], monkeypatch, capsys)
    assert (code, printed) == (2, []) and err.startswith(f"error: {weights}: damaged or truncated weight file (")
    assert err.count("\n") == 1
