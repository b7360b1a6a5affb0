"""Fixtures of the service tests: a tiny model tuned by train.py (with its run folder and base model) from the real data."""

import pytest
from tiny_models import ONE_PROCESS_FLAGS

from tuning.runtime.fileio import read_jsonl
from tuning.train.run import main as train_main

MAX_LENGTH = 40  # short enough that some eval reviews are cut


@pytest.fixture(scope="session")
def tuned_run(make_review_data, make_tiny_base, tmp_path_factory) -> dict:
    """24 steps of train.py (enough to answer both labels) with the default prompt and label words: the run folder,
    the base model its manifest names, and the eval reviews (some longer than MAX_LENGTH)."""
    data_dir = make_review_data(train_per_label=24, eval_per_label=12)
    base = make_tiny_base(data_dir, vocab_size=1000)
    run = tmp_path_factory.mktemp("serve") / "run"
    code = train_main([
        *ONE_PROCESS_FLAGS, "--model_name_or_path", str(base), "--train_data", str(data_dir / "train.jsonl"),
        "--eval_data", "", "--output_dir", str(run), "--max_steps", "24", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--model_max_length", str(MAX_LENGTH), "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true",
    ])
    assert code == 0
    reviews = [record["review"] for record in read_jsonl(data_dir / "eval.jsonl")]
    return {"run": run, "base": base, "eval": data_dir / "eval.jsonl", "reviews": reviews}
