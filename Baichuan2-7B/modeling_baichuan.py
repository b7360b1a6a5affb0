"""Baichuan2-7B for transformers 5.x: weight-compatible with the official checkpoints.

Pre-norm decoder blocks (RMSNorm, packed QKV projection `W_pack`, NeoX-style rotary embedding applied in
float32, SiLU-gated MLP) and a NormHead: the output projection whose rows are L2-normalised before use.
Attention goes through the transformers attention interface (eager, SDPA, flash attention, the Ascend
fused attention), the KV cache is a standard `Cache` and generation is the standard `GenerationMixin`.
Hidden states and attention weights are recorded by transformers' output-capturing hooks
(`_can_record_outputs`), and the loss is transformers' `ForCausalLMLoss` (plus the optional z-loss).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_baichuan import BaichuanConfig

IGNORE_INDEX = -100


class BaichuanRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The variance in float32, the weight applied in the input dtype."""
        input_dtype = hidden_states.dtype
        hidden_fp32 = hidden_states.to(torch.float32)
        variance = hidden_fp32.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_fp32 * torch.rsqrt(variance + self.variance_epsilon)).to(input_dtype)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [batch, seq, head_dim] in float32 (recomputed per call: no buffer to cast or save)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
    inv_freq = 1.0 / (base**exponents)
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [batch, heads, seq, head_dim] in float32 and cast back to the input dtype."""
    x_fp32 = x.to(torch.float32)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x_fp32 * cos + rotate_half(x_fp32) * sin).to(x.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention (softmax in float32); returns [batch, seq, heads, head_dim] and the weights."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class BaichuanAttention(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        packed = self.W_pack(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = packed.permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = cos_sin
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.o_proj(output.reshape(batch, seq_len, -1)), weights


class BaichuanMLP(nn.Module):
    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = BaichuanMLP(config)
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.input_layernorm(hidden_states), cos_sin, attention_mask, cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NormHead(nn.Linear):
    """Output projection (a bias-free `nn.Linear`) with L2-normalised vocabulary rows.

    Training, and any forward under autograd or `torch.compile`/`torch.export`, normalises on the fly, so
    the gradient flows through the normalisation. An eager no-grad evaluation normalises once and reuses the
    result while the weight stays the same: same parameter, same version (in-place updates bump it), no
    `.to()`/`_apply` since, and no training forward since (DeepSpeed updates parameters through flat
    buffers, which bumps no version). The stored weight is never modified.
    """

    def __init__(self, hidden_size: int, vocab_size: int, device=None, dtype=None):
        # nn.Linear's own __init__ would draw an init here; the model's `_init_weights` draws it, so that building a
        # model consumes the random stream exactly as the official code does (same random init for the same seed).
        nn.Module.__init__(self)
        self.in_features, self.out_features = hidden_size, vocab_size
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self._eval_weight: torch.Tensor | None = None
        self._eval_weight_key: tuple[nn.Parameter, int] | None = None  # the parameter and version it was computed from

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "NormHead":
        """A NormHead that takes over the weight of a bias-free `nn.Linear` (no copy) and its initialised flag.

        `resize_token_embeddings` marks the resized layer as initialised; without the flag a later `post_init()`
        would draw the head anew.
        """
        if linear.bias is not None:
            raise ValueError("NormHead has no bias: cannot take over a Linear layer with one")
        head = cls(linear.in_features, linear.out_features, device="meta")
        head.weight = linear.weight
        head._is_hf_initialized = getattr(linear, "_is_hf_initialized", False)
        return head

    def reset_parameters(self) -> None:
        """Official NormHead init: kaiming-uniform rows (the same as `nn.Linear`'s weight init)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def _apply(self, fn, recurse: bool = True):
        self._eval_weight = self._eval_weight_key = None
        return super()._apply(fn, recurse)

    def normalized_weight(self) -> torch.Tensor:
        if self.training:
            # Optimizers may update the weight through a flat buffer that bumps neither its version nor its identity.
            self._eval_weight = self._eval_weight_key = None
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return F.normalize(self.weight, dim=-1)
        source, version = self._eval_weight_key or (None, None)
        if self._eval_weight is None or source is not self.weight or version != self.weight._version:
            self._eval_weight = F.normalize(self.weight.detach(), dim=-1)
            self._eval_weight_key = (self.weight, self.weight._version)
        return self._eval_weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.normalized_weight())


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    config: BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanDecoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.", r"\.inv_freq$", r"\.cos_cached$", r"\.sin_cached$"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": BaichuanDecoderLayer, "attentions": BaichuanAttention}

    def _init_weights(self, module: nn.Module) -> None:
        """Official init: normal(0, initializer_range) for Linear and Embedding (padding row zero), NormHead kaiming-uniform."""
        if isinstance(module, NormHead):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        else:
            super()._init_weights(module)


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(BaichuanDecoderLayer(config, index) for index in range(config.num_hidden_layers))
        self.norm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`output_hidden_states` / `output_attentions` (kwargs or config) add the per-layer outputs."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_length = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past_length

        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        cos_sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin, attention_mask=mask, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache if use_cache else None)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int,
    shift_labels: torch.Tensor | None = None,
    z_loss_weight: float = 0.0,
    **kwargs,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss` (labels or `shift_labels`, -100 ignored, `num_items_in_batch`) plus z-loss.

    The z-loss is `z_loss_weight` times the mean squared max logit over the positions that predict a next
    token: every position but the last with `labels` (as the official code), every given position with
    `shift_labels`.
    """
    loss = ForCausalLMLoss(logits, labels, vocab_size, shift_labels=shift_labels, **kwargs)
    if z_loss_weight > 0:
        predicting = logits if shift_labels is not None else logits[..., :-1, :]
        loss = loss + z_loss_weight * predicting.float().max(dim=-1).values.pow(2).mean()
    return loss


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.loss_function = causal_lm_loss
        self.post_init()

    def get_output_embeddings(self) -> NormHead:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """A plain `nn.Linear` (what `resize_token_embeddings` builds) becomes a NormHead on the same weight."""
        self.lm_head = new_embeddings if isinstance(new_embeddings, NormHead) else NormHead.from_linear(new_embeddings)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        logits_at_labels_only: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """With `labels`, the loss is next-token cross-entropy (ignore -100) by `causal_lm_loss`.

        The targets are `labels` shifted left by one, or `shift_labels` when given (already aligned with the
        positions, as transformers' `ForCausalLMLoss` takes them). `logits_at_labels_only=True` (with `labels`)
        projects only the positions that have a target: the cross-entropy is unchanged and `logits` has shape
        [num_label_positions, vocab_size]. The z-loss (`z_loss_weight > 0`) then averages over those positions
        instead of over every position.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss_kwargs = dict(kwargs, vocab_size=self.config.vocab_size, z_loss_weight=self.config.z_loss_weight)
        loss = None
        if labels is not None and logits_at_labels_only:
            targets = kwargs.get("shift_labels")
            if targets is None:
                targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            selected = targets != IGNORE_INDEX
            logits = self.lm_head(hidden_states[selected])
            loss_kwargs["shift_labels"] = targets[selected]
            loss = self.loss_function(logits=logits, labels=labels, **loss_kwargs)
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, **loss_kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
