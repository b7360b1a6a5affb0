"""BaichuanTokenizer: official outputs on the real vocabulary, loading, saving and padding on a tiny trained one."""

import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from tuning.model.baichuan import BaichuanTokenizer

TEXTS = ["味道不错，送餐很快！", "太难吃了 -> ", "<reserved_106>好吃<reserved_107>积极", "Hello  world 😀 12.5元"]


def _added_token(content: str) -> dict:
    """A special token as the official tokenizer_config.json / special_tokens_map.json spell it."""
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": True}


def write_official_config(folder: Path, with_added_tokens_decoder: bool = False) -> None:
    """The released tokenizer_config.json and special_tokens_map.json; optionally as re-saved by transformers>=4.34."""
    special = {name: _added_token(content) for name, content in
               [("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<unk>"), ("unk_token", "<unk>")]}
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "sp_model_kwargs": {},
        "tokenizer_class": "BaichuanTokenizer",
        **{name: {"__type": "AddedToken", **token} for name, token in special.items()},
    }
    if with_added_tokens_decoder:
        config["added_tokens_decoder"] = {
            str(index): {**_added_token(content), "special": True}
            for index, content in [(0, "<unk>"), (1, "<s>"), (2, "</s>")]
        }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


@pytest.fixture(scope="module")
def reference_cases(reference_dir) -> dict:
    return json.loads((reference_dir / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def real_tokenizer(baichuan_tokenizer_model, tmp_path_factory) -> BaichuanTokenizer:
    """The real vocabulary, loaded from a folder laid out like the official release."""
    folder = tmp_path_factory.mktemp("baichuan2_tokenizer")
    shutil.copyfile(baichuan_tokenizer_model, folder / "tokenizer.model")
    write_official_config(folder)
    return BaichuanTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def tiny_model_file(reference_cases, tmp_path_factory) -> Path:
    """A 1000-piece SentencePiece model with Baichuan2's settings, trained on the reference texts (no shared files)."""
    lines = [case["text"] for case in reference_cases["cases"] if case["text"].strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=1000,
        hard_vocab_limit=False,
        character_coverage=0.995,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        user_defined_symbols=["<reserved_106>", "<reserved_107>"],  # ids 3, 4 after <unk> 0, <s> 1, </s> 2
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("tiny_spm") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture
def tiny_folder(tiny_model_file, tmp_path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copyfile(tiny_model_file, folder / "tokenizer.model")
    return folder


@pytest.mark.parametrize("field", ["ids", "tokens", "decoded", "decoded_skip"])
def test_real_vocabulary_matches_official_outputs(real_tokenizer, reference_cases, field):
    outputs = {
        "ids": lambda ids: ids,
        "tokens": real_tokenizer.convert_ids_to_tokens,
        "decoded": real_tokenizer.decode,
        "decoded_skip": lambda ids: real_tokenizer.decode(ids, skip_special_tokens=True),
    }
    wrong = [
        case["text"][:40]
        for case in reference_cases["cases"]
        if outputs[field](real_tokenizer.encode(case["text"])) != case[field]
    ]
    assert not wrong, f"{len(wrong)} of {len(reference_cases['cases'])} cases differ in {field}: {wrong[:5]}"


def test_real_vocabulary_special_ids(real_tokenizer, reference_cases):
    facts = reference_cases["facts"]
    assert len(real_tokenizer) == real_tokenizer.vocab_size == facts["vocab_size"] == 125696
    assert (real_tokenizer.unk_token, real_tokenizer.unk_token_id) == ("<unk>", 0)
    assert (real_tokenizer.pad_token, real_tokenizer.pad_token_id) == ("<unk>", 0)
    assert (real_tokenizer.bos_token, real_tokenizer.bos_token_id) == ("<s>", 1)
    assert (real_tokenizer.eos_token, real_tokenizer.eos_token_id) == ("</s>", 2)
    assert real_tokenizer.convert_ids_to_tokens([195, 196]) == ["<reserved_106>", "<reserved_107>"]
    assert sorted(real_tokenizer.all_special_ids) == [0, 1, 2]
    assert real_tokenizer.model_max_length == 4096
    assert not real_tokenizer.add_bos_token and not real_tokenizer.add_eos_token
    assert real_tokenizer.encode("积极") == [2652] and real_tokenizer.encode("消极") == [28211]


@pytest.mark.parametrize("with_added_tokens_decoder", [False, True])
def test_official_config_splits_special_tokens_as_the_official_code(tiny_folder, with_added_tokens_decoder):
    # The released config marks <s> and </s> single_word; the official outputs never applied it.
    write_official_config(tiny_folder, with_added_tokens_decoder)
    tokenizer = BaichuanTokenizer.from_pretrained(str(tiny_folder))
    ids = tokenizer.encode("<s>好吃</s>")
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == tokenizer.encode("好吃")
    assert tokenizer.decode(ids) == "<s> 好吃</s>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "好吃"


def test_folder_with_only_tokenizer_model(tiny_folder):
    tokenizer = BaichuanTokenizer.from_pretrained(str(tiny_folder))
    special_ids = (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert special_ids == (0, 0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([3, 4]) == ["<reserved_106>", "<reserved_107>"]
    for text in TEXTS:  # byte fallback: characters outside the 1000 pieces still round-trip
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<reserved_106>好<reserved_107>")[::2] == [3, 4]


def test_missing_tokenizer_model_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.model"):
        BaichuanTokenizer.from_pretrained(str(tmp_path))


def test_add_bos_and_eos_when_asked(tiny_model_file):
    plain = BaichuanTokenizer(vocab_file=str(tiny_model_file))
    both = BaichuanTokenizer(vocab_file=str(tiny_model_file), add_bos_token=True, add_eos_token=True)
    body = plain.encode(TEXTS[0])
    assert both.encode(TEXTS[0]) == [1, *body, 2]
    assert both.encode(TEXTS[0], add_special_tokens=False) == body
    mask = both(TEXTS[0], return_special_tokens_mask=True)["special_tokens_mask"]
    assert mask == [1] + [0] * len(body) + [1]
    assert both.decode(both.encode(TEXTS[0]), skip_special_tokens=True) == TEXTS[0]


@pytest.mark.parametrize("add_bos", [False, True])
def test_save_and_reload_keep_behaviour(tiny_folder, tmp_path, add_bos):
    write_official_config(tiny_folder)
    tokenizer = BaichuanTokenizer.from_pretrained(str(tiny_folder), add_bos_token=add_bos)
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(str(saved))

    assert (saved / "tokenizer.model").read_bytes() == (tiny_folder / "tokenizer.model").read_bytes()
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]}
    assert config["tokenizer_class"] == "BaichuanTokenizer"
    assert (config["add_bos_token"], config["add_eos_token"]) == (add_bos, False)
    assert (saved / "tokenization_baichuan.py").is_file()

    reloaded = BaichuanTokenizer.from_pretrained(str(saved))
    assert reloaded.add_bos_token == add_bos and reloaded.model_max_length == 4096
    for text in [*TEXTS, "<s>好吃</s>"]:
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert pickle.loads(pickle.dumps(reloaded)).encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch(tiny_model_file, padding_side):
    tokenizer = BaichuanTokenizer(vocab_file=str(tiny_model_file))
    batch = tokenizer(TEXTS, padding=True, padding_side=padding_side, return_tensors="pt")
    width = max(len(tokenizer.encode(text)) for text in TEXTS)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(TEXTS), width)
    for text, row, mask in zip(TEXTS, batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        ids = tokenizer.encode(text)
        pad = [0] * (width - len(ids))
        assert row == (pad + ids if padding_side == "left" else ids + pad)
        assert mask == ([0] * len(pad) + [1] * len(ids) if padding_side == "left" else [1] * len(ids) + [0] * len(pad))


def test_auto_tokenizer_uses_our_class_without_remote_code(tiny_folder, reference_dir):
    shutil.copyfile(reference_dir / "config.json", tiny_folder / "config.json")  # model_type "baichuan" + auto_map
    write_official_config(tiny_folder)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_folder))
    assert type(tokenizer) is BaichuanTokenizer
    assert tokenizer.encode("<s>好吃") == [1, *tokenizer.encode("好吃")]
