"""The `tiny` preset: a small random-init Baichuan2 model with a vocabulary trained on the training reviews.

`python -m tuning.model.tiny --train_data data/train.jsonl --output_dir output/demo/tiny-base` saves an ordinary model
folder (weights, config, tokenizer.model, our code files) that tuning.model.baichuan.load_model/load_tokenizer read like
Baichuan2-7B-Base. train.py then fine-tunes it exactly like the 7B model: it is the CPU demo's base model.
"""

import argparse
import io
import sys
from pathlib import Path

import sentencepiece as spm
import torch

from tuning.data.prompt import DEFAULT_TEMPLATE
from tuning.model.baichuan import BaichuanForCausalLM, BaichuanTokenizer, tiny_config
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.errors import DataError, report_errors
from tuning.runtime.fileio import read_jsonl, staging_folder

USER_TOKEN = "<reserved_106>"  # Baichuan2's chat role tokens (ids 195/196 in the 7B vocabulary)
ASSISTANT_TOKEN = "<reserved_107>"
DEFAULT_VOCAB_SIZE = 4000


def train_vocabulary(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> bytes:
    """A SentencePiece BPE model laid out like Baichuan2's: <unk> 0 (also pad), <s> 1, </s> 2, the chat tokens 3 and 4.

    The normalisation settings are Baichuan2's too (identity, no dummy prefix, digits split, byte fallback), so any
    text encodes; the vocabulary may stay below `vocab_size` when the texts are few.
    """
    model = io.BytesIO()
    try:
        _train_sentencepiece(texts, vocab_size, model)
    except RuntimeError as error:  # e.g. fewer pieces allowed than the texts have characters
        reason = str(error).split("] ")[-1].split(".")[0]
        raise DataError(f"--vocab_size {vocab_size}: {reason}") from None
    return model.getvalue()


def _train_sentencepiece(texts: list[str], vocab_size: int, model: io.BytesIO) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=[USER_TOKEN, ASSISTANT_TOKEN],
        num_threads=1,
        minloglevel=2,
    )


def build_tiny_base(
    train_data: str | Path, output_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0
) -> BaichuanForCausalLM:
    """Train the vocabulary on the reviews of `train_data` in prompt form, build the random model, save both.

    Everything is written to a temporary folder beside `output_dir` and renamed into place at the end, so an
    interrupted build leaves nothing behind; an existing `output_dir` is never touched.
    """
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise DataError(f"{output_dir} already exists; remove it or choose another --output_dir")
    records = read_jsonl(train_data, required_keys=("review", "label"))
    # Prompt and answer are encoded separately in training, so they are separate sentences here too.
    texts = []
    for record in records:
        texts += [DEFAULT_TEMPLATE.format(review=record["review"]), str(record["label"])]
    with staging_folder(output_dir) as staging:
        (staging / "tokenizer.model").write_bytes(train_vocabulary(texts, vocab_size))
        tokenizer = BaichuanTokenizer(vocab_file=str(staging / "tokenizer.model"))
        torch.manual_seed(seed)
        config = tiny_config(
            tokenizer.vocab_size,
            user_token_id=tokenizer.convert_tokens_to_ids(USER_TOKEN),
            assistant_token_id=tokenizer.convert_tokens_to_ids(ASSISTANT_TOKEN),
        )
        model = BaichuanForCausalLM(config)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(output_dir)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.model.tiny",
        description="Build the `tiny` demo base model: a SentencePiece vocabulary trained on the reviews of "
        "--train_data (Baichuan2's special-token layout) and a randomly initialised ~1.4M-parameter model of the "
        "Baichuan2 architecture, saved as a model folder that train.py and run_test.py load like Baichuan2-7B-Base.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--train_data", type=Path, default=Path("data/train.jsonl"),
                        help='JSONL file with one {"review": ...} per line (made by make_data.py)')
    parser.add_argument("--output_dir", type=Path, required=True,
                        help="the model folder to create (must not exist yet); the launcher's is the demo recipe's "
                             "model_name_or_path")
    parser.add_argument("--vocab_size", type=whole_number(16), default=DEFAULT_VOCAB_SIZE,
                        help="largest vocabulary size (smaller when the reviews are few)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)

    def build() -> int:
        model = build_tiny_base(args.train_data, args.output_dir, args.vocab_size, args.seed)
        print(f"built tiny base model in {args.output_dir}: {model.num_parameters():,} parameters, "
              f"vocabulary {model.config.vocab_size}")
        return 0

    return report_errors(build)


if __name__ == "__main__":
    sys.exit(main())
