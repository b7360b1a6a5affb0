"""Baichuan2 tokenizer: the released SentencePiece BPE vocabulary (`tokenizer.model`) behind the transformers API."""

import json
import os

import sentencepiece as spm
from transformers import AddedToken, PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _special_token(token: str | AddedToken | None) -> AddedToken | None:
    """A special token split off wherever it appears.

    The released tokenizer_config.json marks bos/eos/unk/pad `single_word`; the official outputs were made by a
    transformers that ignored it, while newer ones would glue `<s>` to an adjacent word. So `single_word` is dropped.
    """
    if token is None:
        return None
    lstrip, rstrip = (token.lstrip, token.rstrip) if isinstance(token, AddedToken) else (False, False)
    return AddedToken(str(token), lstrip=lstrip, rstrip=rstrip, normalized=False, special=True)


class BaichuanTokenizer(PreTrainedTokenizer):
    """Byte-fallback BPE over `tokenizer.model`; ids, tokens and decoded text equal the official Baichuan2 tokenizer's.

    `<unk>` (0) is also the pad token, `<s>` is 1, `</s>` 2; the chat roles are `<reserved_106>` (195) and
    `<reserved_107>` (196). No bos/eos is added unless `add_bos_token` / `add_eos_token` is set.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    # As after `register_for_auto_class()`: save_pretrained copies this file beside tokenizer.model and writes
    # auto_map {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", null]}, as in the official release.
    _auto_class = "AutoTokenizer"

    def __init__(
        self,
        vocab_file: str,
        unk_token: str | AddedToken = "<unk>",
        bos_token: str | AddedToken = "<s>",
        eos_token: str | AddedToken = "</s>",
        pad_token: str | AddedToken | None = "<unk>",
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        sp_model_kwargs: dict | None = None,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        if not vocab_file or not os.path.isfile(vocab_file):
            expected = vocab_file or os.path.join(kwargs.get("name_or_path", ""), VOCAB_FILES_NAMES["vocab_file"])
            raise ValueError(f"Baichuan2 tokenizer: SentencePiece model not found: {expected}")
        self.vocab_file = vocab_file
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.sp_model_kwargs = sp_model_kwargs or {}
        # Loaded before the base __init__, which already looks tokens up in the vocabulary.
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)
        saved_tokens = kwargs.pop("added_tokens_decoder", None) or {}
        kwargs["added_tokens_decoder"] = {
            index: _special_token(token) if getattr(token, "special", False) else token
            for index, token in saved_tokens.items()
        }
        super().__init__(
            unk_token=_special_token(unk_token),
            bos_token=_special_token(bos_token),
            eos_token=_special_token(eos_token),
            pad_token=_special_token(pad_token),
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            sp_model_kwargs=self.sp_model_kwargs,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(index): index for index in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Decode pieces; as in the official code, a special token right after ordinary text adds a space before it."""
        special_tokens = set(self.all_special_tokens)
        parts: list[str] = []
        pending: list[str] = []
        for token in tokens:
            if token in special_tokens:
                if pending:
                    parts.append(" " + self.sp_model.decode(pending))
                    pending = []
                parts.append(token)
            else:
                pending.append(token)
        parts.append(self.sp_model.decode(pending))
        return "".join(parts)

    def _with_markers(self, first: list, second: list | None, bos: list, eos: list) -> list:
        """`bos first eos [bos second eos]`, with bos / eos only where `add_bos_token` / `add_eos_token` is set."""
        prefix = bos if self.add_bos_token else []
        suffix = eos if self.add_eos_token else []
        output = prefix + first + suffix
        if second is not None:
            output += prefix + second + suffix
        return output

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return self._with_markers(token_ids_0, token_ids_1, [self.bos_token_id], [self.eos_token_id])

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        second = None if token_ids_1 is None else [0] * len(token_ids_1)
        return self._with_markers([0] * len(token_ids_0), second, [1], [1])

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Write the SentencePiece model as `tokenizer.model` (temp file + rename)."""
        prefix = filename_prefix + "-" if filename_prefix else ""
        path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        with open(path + ".tmp", "wb") as handle:
            handle.write(self.sp_model.serialized_model_proto())
        os.replace(path + ".tmp", path)
        return (path,)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None) -> tuple[str, ...]:
        """Put back `add_bos_token` / `add_eos_token`, which transformers 5 leaves out of tokenizer_config.json."""
        prefix = filename_prefix + "-" if filename_prefix else ""
        config_file = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
        config.update(add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
        with open(config_file + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        os.replace(config_file + ".tmp", config_file)
        return super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
