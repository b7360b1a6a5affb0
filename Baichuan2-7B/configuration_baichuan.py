"""Baichuan2-7B configuration (defaults are the official Baichuan2-7B-Base values)."""

from transformers.configuration_utils import PreTrainedConfig


class BaichuanConfig(PreTrainedConfig):
    """Config of the Baichuan2-7B architecture: LLaMA-style blocks, packed QKV (`W_pack`), RoPE, NormHead."""

    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 125696
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    model_max_length: int = 4096
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    user_token_id: int = 195
    assistant_token_id: int = 196
    tie_word_embeddings: bool = False
    z_loss_weight: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
