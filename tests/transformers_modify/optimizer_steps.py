"""Three optimizer steps of a recipe's optimizer through transformers' Trainer, against torch's AdamW.

    python tests/transformers_modify/optimizer_steps.py RECIPE.yaml --device_kind npu --output result.json

The recipe's `optim` is adapted to `--device_kind` by transformers_modify, as train.py does; transformers then picks
the optimizer class and makes its two param groups (weight decay and none). With the recipe's `deepspeed` config
DeepSpeed steps the optimizer (ZeRO steps it once per param group, with only that group in `param_groups`, and
assigns a new gradient tensor every step); with `deepspeed: null` the Trainer's own loop does (`model.zero_grad()`
sets the gradients to None). The reference is torch.optim.AdamW (for-loop) over the same groups and batches. The
run is fp32 on the detected device (WAIMAI_DEVICE=cpu: the CPU, DeepSpeed over gloo), in one process unless a
launcher started several. Rank 0 writes {"optimizer": <name>, "zero_stage": <stage or null>} with "max_difference",
"param_groups" and "optimizer_class", or with "error": "<exception>: <message>", to --output.

`--transformers_optim NAME` hands transformers NAME instead of the adapted choice (what an older mapping chose).
"""

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

from transformers_modify.training_args import adapt_to_device, use_gloo_for_deepspeed
from tuning.runtime.devices import detect_device, prepare_device

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS, LEARNING_RATE, WEIGHT_DECAY, BATCH = 3, 1e-2, 0.1, 2


def tiny_model() -> LlamaForCausalLM:
    """A Llama-architecture model of a few thousand parameters: weights (decayed) and norms (not decayed)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def one_example() -> dict[str, torch.Tensor]:
    """Every batch holds copies of this example, so each rank's gradient is the reference's."""
    input_ids = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(1))
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def reference_weights(model: LlamaForCausalLM, decayed: set[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The weights after STEPS steps of torch's for-loop AdamW on the same batches."""
    model = model.to(device).train()
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, foreach=False, fused=False)
    batch = {name: tensor.to(device) for name, tensor in default_data_collator([one_example()] * BATCH).items()}
    for _ in range(STEPS):
        model(**batch).loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return {name: parameter.detach() for name, parameter in model.named_parameters()}


def innermost(optimizer):
    """The optimizer that accelerate's and DeepSpeed's wrappers hold."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def training_arguments(recipe: dict, device_kind: str, transformers_optim: str | None, output_dir: str,
                       on_cpu: bool) -> TrainingArguments:
    """The recipe's optimizer and DeepSpeed config as train.py adapts them; fp32, constant lr, no clipping."""
    deepspeed = recipe.get("deepspeed")
    values = dict(optim=recipe["optim"], bf16=False, fp16=False, tf32=None, use_cpu=False, accelerator_config=None,
                  deepspeed=str(REPO_ROOT / deepspeed) if deepspeed else None)
    adapt_to_device(values, device_kind, native_bf16=True)
    if transformers_optim:
        values["optim"] = transformers_optim
    if on_cpu:  # the tensors live on the CPU whatever kind the optimizer was chosen for
        values["use_cpu"] = True
        if values["deepspeed"]:
            values["accelerator_config"] = use_gloo_for_deepspeed(values["accelerator_config"])
    return TrainingArguments(
        output_dir=output_dir, max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY, lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no",
        report_to="none", logging_strategy="no", disable_tqdm=True, seed=0, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe file of configs/")
    parser.add_argument("--device_kind", help="the device kind the optimizer is chosen for (default: the detected)")
    parser.add_argument("--transformers_optim", help="the optim name handed to transformers instead of the adapted")
    parser.add_argument("--output", required=True, help="JSON file for the result")
    args = parser.parse_args()

    device = detect_device(int(os.environ.get("LOCAL_RANK", "0")))
    prepare_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    recipe = yaml.safe_load((REPO_ROOT / args.recipe).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as output_dir:
        train_args = training_arguments(recipe, args.device_kind or device.kind, args.transformers_optim,
                                        output_dir, on_cpu=device.kind == "cpu")
        model = tiny_model()
        initial = copy.deepcopy(model)
        trainer = Trainer(model=model, args=train_args, train_dataset=[one_example()] * (BATCH * STEPS * 8),
                          data_collator=default_data_collator)
        expected = reference_weights(initial, set(trainer.get_decay_parameter_names(initial)),
                                     device.torch_device(int(os.environ.get("LOCAL_RANK", "0"))))
        zero = train_args.hf_deepspeed_config.config["zero_optimization"]["stage"] if train_args.deepspeed else None
        result: dict = {"optimizer": train_args.optim, "zero_stage": zero}
        try:
            trainer.train()
        except Exception as error:  # noqa: BLE001 - the failure is the result
            result["error"] = f"{type(error).__name__}: {error}"
        else:
            trained = dict(trainer.model.named_parameters())
            result["max_difference"] = max(
                (trained[name].detach() - weight).abs().max().item() for name, weight in expected.items())
            result["param_groups"] = len(trainer.optimizer.param_groups)
            result["optimizer_class"] = type(innermost(trainer.optimizer)).__name__
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.output).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
