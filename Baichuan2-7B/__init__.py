"""Our Baichuan2-7B implementation (config, model, tokenizer); also usable as drop-in remote code."""

from .configuration_baichuan import BaichuanConfig
from .modeling_baichuan import BaichuanForCausalLM, BaichuanModel
from .tokenization_baichuan import BaichuanTokenizer

__all__ = ["BaichuanConfig", "BaichuanForCausalLM", "BaichuanModel", "BaichuanTokenizer"]
