"""The check that a model folder works as remote code: transformers' Auto classes with trust_remote_code, run in a
fresh Python process that never imports our `tuning` package."""

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = """\
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, expected_file, text = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
expected = load_file(expected_file)
if text:
    ids = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True).encode(text)
    assert ids == expected["text_ids"].tolist(), ids
with torch.no_grad():
    logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
assert "tuning" not in sys.modules
print(type(model).__name__)
"""


def assert_works_as_remote_code(
    model_dir: Path, batch: dict[str, torch.Tensor], logits: torch.Tensor, workdir: Path, text: str = "",
    text_ids: list[int] | None = None,
) -> None:
    """The folder's own code gives `logits` on `batch` (input_ids, attention_mask) within 1e-5, and its tokenizer
    encodes `text` to `text_ids` when a text is given."""
    expected = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "logits": logits}
    if text:
        expected["text_ids"] = torch.tensor(text_ids)
    expected_file = workdir / "expected.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in expected.items()}, expected_file)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir.resolve()), str(expected_file.resolve()), text],
                            capture_output=True, text=True, cwd=workdir, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("BaichuanForCausalLM")
