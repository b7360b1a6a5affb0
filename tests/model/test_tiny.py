import pytest
import sentencepiece as spm
from review_samples import write_reviews

from tuning.data.prompt import PromptFormat
from tuning.model.baichuan import load_model, load_tokenizer
from tuning.model.tiny import ASSISTANT_TOKEN, USER_TOKEN, build_tiny_base, main, train_vocabulary
from tuning.runtime.errors import DataError


@pytest.fixture(scope="module")
def train_jsonl(waimai_csv, tmp_path_factory):
    return write_reviews(waimai_csv, tmp_path_factory.mktemp("data") / "train.jsonl", per_label=150)


def test_vocabulary_has_baichuan2s_special_token_layout():
    texts = ["很好吃 -> ", "积极", "太慢了 -> ", "消极"] * 50
    processor = spm.SentencePieceProcessor(model_proto=train_vocabulary(texts))
    assert [processor.id_to_piece(index) for index in range(5)] == ["<unk>", "<s>", "</s>", USER_TOKEN, ASSISTANT_TOKEN]
    assert processor.pad_id() == -1  # like Baichuan2: <unk> doubles as pad
    # byte fallback: text never seen in training still encodes and decodes exactly
    assert processor.decode(processor.encode("鲜虾🍤")) == "鲜虾🍤"


def test_tiny_base_is_an_ordinary_loadable_model_folder(train_jsonl, tmp_path):
    output = tmp_path / "tiny-base"
    assert main(["--train_data", str(train_jsonl), "--output_dir", str(output), "--vocab_size", "2000"]) == 0
    tokenizer, model = load_tokenizer(output), load_model(output)
    config = model.config
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([config.user_token_id, config.assistant_token_id]) == [
        USER_TOKEN, ASSISTANT_TOKEN]
    assert config.vocab_size == tokenizer.vocab_size <= 2000
    assert 500_000 < model.num_parameters() < 2_000_000
    # the prompt format of the 7B path works unchanged
    example = PromptFormat.from_config(config).encode_example(tokenizer, "味道不错", "积极", max_length=64)
    assert example.input_ids[0] == config.user_token_id and example.input_ids[-1] == config.eos_token_id
    # the answer words were common in the vocabulary's training text: one piece each
    assert len(tokenizer.encode("积极", add_special_tokens=False)) == 1


def test_same_seed_same_model(train_jsonl, tmp_path):
    first = build_tiny_base(train_jsonl, tmp_path / "a", vocab_size=2000, seed=3)
    second = build_tiny_base(train_jsonl, tmp_path / "b", vocab_size=2000, seed=3)
    assert all((p.detach() == q.detach()).all() for p, q in zip(first.parameters(), second.parameters()))
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()


def test_existing_folder_is_never_overwritten(train_jsonl, tmp_path, capsys):
    output = tmp_path / "tiny-base"
    output.mkdir()
    (output / "keep.txt").write_text("mine", encoding="utf-8")
    assert main(["--train_data", str(train_jsonl), "--output_dir", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["keep.txt"]


def test_bad_input_is_a_one_line_error_and_leaves_nothing_behind(train_jsonl, tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"review": "好吃", "label": "积极"}\n{"review": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid JSON"):
        build_tiny_base(bad, tmp_path / "out" / "tiny-base")
    too_small = ["--train_data", str(train_jsonl), "--output_dir", str(tmp_path / "out" / "b"), "--vocab_size", "300"]
    assert main(too_small) == 2
    assert capsys.readouterr().err.startswith("error: --vocab_size 300: Vocabulary size is smaller than required_chars")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
