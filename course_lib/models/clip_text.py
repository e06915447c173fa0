"""CLIP's text encoder, the one Stable Diffusion conditions on. Defined in notebook 04_clip_text_embeddings.

Token + position embeddings, a stack of pre-LayerNorm transformer blocks with a *causal* mask (each
token sees only itself and the tokens before it; CLIP's text tower is not bidirectional like BERT),
a final LayerNorm, and a pooled vector taken at the end token. Parameter names are transformers'
``CLIPTextModel`` names; reading transformers' files (its config and the two renaming rules of its
state dict) is ``course_lib.pipeline.convert.clip``'s job.

Which output Stable Diffusion uses:
- SD v1 reads ``last_hidden_state`` (B, 77, 768): the final LayerNorm applied to the last block.
- SD 2 reads the *penultimate* block's state with the final LayerNorm applied to it,
  ``final_layer_norm(hidden_states[-2])`` (``text_context(ids, layer=-2)``). Note that
  ``hidden_states`` are the raw block outputs, before any final LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPTextConfig", "TextEncoderOutput", "quick_gelu", "TextEmbeddings", "SelfAttention", "MLP",
           "EncoderLayer", "TransformerStack", "causal_mask", "CLIPTextEncoder"]

_ACTIVATIONS = ("quick_gelu", "gelu")
_POOLING = ("first_eos", "argmax")


@dataclass
class CLIPTextConfig:
    """Sizes of a CLIP text encoder; the defaults are SD v1's (OpenAI CLIP ViT-L/14 text tower).

    Field names are transformers' ``CLIPTextConfig`` names. ``pooling`` picks the pooled position:
    ``"first_eos"`` (the first ``eos_token_id`` in the row) or ``"argmax"`` (the highest id in the
    row: CLIP's original rule, which transformers uses when a config says ``eos_token_id == 2``).
    The two agree whenever the end token has the highest id, as in CLIP's vocabulary and in
    vocabularies made by ``course_lib.models.tokenizer.train_bpe``. Defined in notebook
    04_clip_text_embeddings.
    """

    vocab_size: int = 49408
    max_position_embeddings: int = 77  # the context length
    hidden_size: int = 768  # the width
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # SD 2's OpenCLIP ViT-H uses exact "gelu"
    eos_token_id: int = 49407
    pooling: str = "first_eos"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CLIPTextConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}; pick heads that divide the width")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {_ACTIVATIONS}, got {self.hidden_act!r}")
        if self.pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {_POOLING}, got {self.pooling!r}")

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @property
    def width(self) -> int:
        return self.hidden_size


@dataclass
class TextEncoderOutput:
    """What ``CLIPTextEncoder`` returns. Supports notebook 04_clip_text_embeddings.

    ``last_hidden_state`` (B, L, D) after the final LayerNorm; ``pooled`` (B, D) at the end token;
    ``hidden_states``: the embeddings then each block's output (num_layers + 1 tensors, before the
    final LayerNorm), only when asked for.
    """

    last_hidden_state: torch.Tensor
    pooled: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def pooler_output(self) -> torch.Tensor:
        """transformers' name for ``pooled``."""
        return self.pooled


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's activation ``x * sigmoid(1.702 x)``. Defined in notebook 04_clip_text_embeddings."""
    return x * torch.sigmoid(1.702 * x)


class TextEmbeddings(nn.Module):
    """Token embedding plus learned position embedding. Supports notebook 04_clip_text_embeddings."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, L) -> (B, L, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (CLIP's layout).

    Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: bool (B or 1, 1, L, L), True where a query may attend; ``None`` means causal."""
        b, n, d = x.shape
        heads = [proj(x).view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
                 for proj in (self.q_proj, self.k_proj, self.v_proj)]  # each (B, L, D) -> (B, H, L, D/H)
        out = F.scaled_dot_product_attention(*heads, attn_mask=mask, is_causal=mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))  # (B, H, L, D/H) -> (B, L, D)


class MLP(nn.Module):
    """Two linear layers with quick GELU between (width -> intermediate -> width).

    Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = quick_gelu if config.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.self_attn = SelfAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class TransformerStack(nn.Module):
    """The blocks, in ``.layers`` (transformers calls this the encoder).

    Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.num_hidden_layers)])


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool (L, L) mask, True where query ``i`` may attend key ``j``, that is ``j <= i``.

    Supports notebook 04_clip_text_embeddings.
    """
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class CLIPTextEncoder(nn.Module):
    """CLIP's causal text transformer, as Stable Diffusion uses it (transformers' parameter names).

    ``forward(input_ids)`` returns a ``TextEncoderOutput``; ``text_context(input_ids, layer)``
    gives the (B, L, D) context a U-Net cross-attends to (layer -1 for SD v1, -2 for SD 2).
    Defined in notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if not isinstance(config, CLIPTextConfig):
            raise TypeError(f"config must be a course_lib.models.clip.CLIPTextConfig, got {type(config).__name__}; "
                            "convert a transformers config with "
                            "course_lib.pipeline.convert.clip.clip_text_config_from_hf(...)")
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = TransformerStack(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        ok = isinstance(input_ids, torch.Tensor) and not input_ids.dtype.is_floating_point
        if not ok or input_ids.dim() != 2:
            got = f"{getattr(input_ids, 'dtype', type(input_ids))} {tuple(getattr(input_ids, 'shape', ()))}"
            raise TypeError(f"input_ids must be an integer tensor of shape (batch, length), got {got} "
                            "(for a single prompt's ids use ids[None])")
        length, limit = input_ids.shape[1], self.config.max_position_embeddings
        if length > limit:
            raise ValueError(f"sequence length {length} exceeds the {limit} positions of this encoder; "
                             "truncate with the tokenizer (truncation=True)")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got min "
                             f"{int(input_ids.min())}, max {int(input_ids.max())}: is the tokenizer's "
                             "vocabulary larger than config.vocab_size?")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")

    def _mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """None (plain causal) or a bool (B, 1, L, L) mask: causal AND key is not padding."""
        if attention_mask is None:
            return None
        causal = causal_mask(input_ids.shape[1], input_ids.device)
        return causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, L, L)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             num_layers: int) -> list[torch.Tensor]:
        """Embeddings, then the first ``num_layers`` blocks; every intermediate state."""
        self._check_inputs(input_ids, attention_mask)
        mask = self._mask(input_ids, attention_mask)
        states = [self.embeddings(input_ids)]  # (B, L) -> (B, L, D)
        for layer in self.encoder.layers[:num_layers]:
            states.append(layer(states[-1], mask))
        return states

    def pool(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The state at the end token of each row: (B, L, D) -> (B, D)."""
        if self.config.pooling == "argmax":
            index = input_ids.argmax(dim=-1)  # the first position of the highest id
        else:
            is_eos = input_ids == self.config.eos_token_id
            if not bool(is_eos.any(dim=-1).all()):
                rows = (~is_eos.any(dim=-1)).nonzero().flatten().tolist()
                raise ValueError(f"rows {rows[:8]} contain no end token (id {self.config.eos_token_id}) to "
                                 "pool at; tokenize with the course tokenizer, which appends it, or check "
                                 "config.eos_token_id")
            index = is_eos.int().argmax(dim=-1)  # the first end token
        return last_hidden_state[torch.arange(len(index), device=index.device), index]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> TextEncoderOutput:
        """Encode token ids (B, L) into per-token states (B, L, D) and one pooled vector (B, D).

        ``attention_mask`` (B, L), 1 for tokens and 0 for padding, is optional: Stable Diffusion
        passes none (the causal mask already hides the padding that follows the prompt).
        """
        states = self._run(input_ids, attention_mask, self.config.num_hidden_layers)
        last = self.final_layer_norm(states[-1])
        return TextEncoderOutput(last_hidden_state=last, pooled=self.pool(last, input_ids),
                                 hidden_states=tuple(states) if output_hidden_states else None)

    def text_context(self, input_ids: torch.Tensor, layer: int = -1,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``final_layer_norm(hidden_states[layer])``, (B, L, D): what a U-Net cross-attends to.

        ``layer=-1`` is ``last_hidden_state`` (SD v1); ``layer=-2`` is SD 2's penultimate layer
        (also known as "clip skip 2"). Blocks after the chosen one are not run.
        """
        n = self.config.num_hidden_layers
        index = layer + n + 1 if layer < 0 else layer  # index into (embeddings, block 1, ..., block n)
        if not 0 <= index <= n:
            raise ValueError(f"layer must be in [-{n + 1}, {n}] for {n} blocks, got {layer}")
        return self.final_layer_norm(self._run(input_ids, attention_mask, index)[-1])
