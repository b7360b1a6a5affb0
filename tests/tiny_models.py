"""Small random causal LMs for the scoring and generation tests: a tiny Llama and our tiny Baichuan2; weights written
in the official release's sharded .bin layout."""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuning.model.baichuan import BaichuanForCausalLM, tiny_config
from tuning.runtime.devices import detect_device

VOCAB_SIZE = 97
MODEL_KINDS = ("llama", "baichuan")
INIT_STD = 0.3  # far above the usual 0.02, so that positions and padding visibly change the outputs


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=INIT_STD,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_baichuan(seed: int = 0) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(VOCAB_SIZE, user_token_id=95, assistant_token_id=96, initializer_range=INIT_STD)
    return BaichuanForCausalLM(config).eval()


def build_model(kind: str, seed: int = 0):
    return tiny_llama(seed) if kind == "llama" else tiny_baichuan(seed)


# train.py flags that run the default (7B) recipe in one plain process on a tiny model: no DeepSpeed, the batch as
# given, no gradient checkpointing, evaluation as --eval_strategy says.
ONE_PROCESS_FLAGS = ["--deepspeed", "", "--global_batch_size", "0", "--gradient_checkpointing", "false",
                     "--eval_points_per_epoch", "0"]


def expected_precision() -> str:
    """What a bf16 recipe trains in on this machine's device: fp32 on the CPU, fp16 on GPUs without bf16."""
    device = detect_device()
    return "fp32" if device.kind == "cpu" else "bf16" if device.bf16 else "fp16"


def write_sharded_bin(state_dict: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> list[Path]:
    """The official release's layout: `pytorch_model-0000N-of-0000M.bin` (torch.save of plain tensors, the names split
    in order into `shards` parts) and `pytorch_model.bin.index.json` (total_size in the stored dtype, weight_map)."""
    names = list(state_dict)
    files, weight_map = [], {}
    for index in range(shards):
        path = folder / f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = names[index * len(names) // shards : (index + 1) * len(names) // shards]
        torch.save({name: state_dict[name].clone() for name in part}, path)
        weight_map.update(dict.fromkeys(part, path.name))
        files.append(path)
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in state_dict.values())
    index_json = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index_json, indent=2), encoding="utf-8")
    return files
