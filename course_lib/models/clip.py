"""CLIP's text encoder, a small image encoder and contrastive training pieces.

Defined in notebook 04_clip_text_embeddings.

The text encoder is the one Stable Diffusion conditions on: token + position embeddings, a stack
of pre-LayerNorm transformer blocks with a *causal* mask (each token sees only itself and the
tokens before it; CLIP's text tower is not bidirectional like BERT), a final LayerNorm, and a
pooled vector taken at the end token. Parameter names are transformers' ``CLIPTextModel`` names,
so its weights load with ``load_hf_clip_text_state_dict`` after two renaming rules.

Which output Stable Diffusion uses:
- SD v1 reads ``last_hidden_state`` (B, 77, 768): the final LayerNorm applied to the last block.
- SD 2 reads the *penultimate* block's state with the final LayerNorm applied to it,
  ``final_layer_norm(hidden_states[-2])`` (``text_context(ids, layer=-2)``). Note that
  ``hidden_states`` are the raw block outputs, before any final LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = ("quick_gelu", "gelu")
_POOLING = ("first_eos", "argmax")
HF_PREFIX = "text_model."


# ----------------------------------------------------------------------------- text encoder
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

    @classmethod
    def from_hf_config(cls, hf_config: object) -> CLIPTextConfig:
        """Our config from a transformers ``CLIPTextConfig`` (object or dict, e.g. a config.json).

        Follows transformers' pooling rule: ``eos_token_id == 2`` (old configs, SD v1 and 2) means
        ``argmax`` pooling, anything else the first position of ``eos_token_id``.
        """
        get = hf_config.get if isinstance(hf_config, Mapping) else lambda k, d=None: getattr(hf_config, k, d)
        eos = get("eos_token_id", 49407)
        return cls(vocab_size=get("vocab_size"), max_position_embeddings=get("max_position_embeddings"),
                   hidden_size=get("hidden_size"), num_hidden_layers=get("num_hidden_layers"),
                   num_attention_heads=get("num_attention_heads"), intermediate_size=get("intermediate_size"),
                   layer_norm_eps=get("layer_norm_eps", 1e-5), hidden_act=get("hidden_act", "quick_gelu"),
                   eos_token_id=eos, pooling="argmax" if eos == 2 else "first_eos")


@dataclass
class TextEncoderOutput:
    """What ``CLIPTextEncoder`` returns. Defined in notebook 04_clip_text_embeddings.

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
    """Token embedding plus learned position embedding. Defined in notebook 04_clip_text_embeddings."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, L) -> (B, L, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (CLIP's layout).

    Defined in notebook 04_clip_text_embeddings.
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

    Defined in notebook 04_clip_text_embeddings.
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

    Defined in notebook 04_clip_text_embeddings.
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

    Defined in notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.num_hidden_layers)])


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool (L, L) mask, True where query ``i`` may attend key ``j``, that is ``j <= i``.

    Defined in notebook 04_clip_text_embeddings.
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
                            "convert a transformers config with CLIPTextConfig.from_hf_config(...)")
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


def load_hf_clip_text_state_dict(model: CLIPTextEncoder,
                                 state_dict: Mapping[str, torch.Tensor]) -> CLIPTextEncoder:
    """Load a transformers ``CLIPTextModel`` state dict into ``model``; return ``model``.

    The rules: (1) drop a leading ``text_model.`` (transformers 4.x and whole-``CLIPModel`` files
    have it, 5.x does not); (2) ignore the ``embeddings.position_ids`` buffer (we use arange).
    All other names are the same. Missing, unexpected or wrongly shaped keys raise a
    ``ValueError`` that lists them. Defined in notebook 04_clip_text_embeddings.
    """
    if not isinstance(model, CLIPTextEncoder):
        raise TypeError(f"model must be a CLIPTextEncoder, got {type(model).__name__}")
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if new == "embeddings.position_ids":
            continue
        if new in renamed:
            raise ValueError(f"key {new!r} occurs both with and without the {HF_PREFIX!r} prefix")
        renamed[new] = value
    own = model.state_dict()
    missing = sorted(set(own) - set(renamed))
    unexpected = sorted(set(renamed) - set(own))
    wrong_shape = [f"{k}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in sorted(set(own) & set(renamed)) if renamed[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        if wrong_shape:
            parts.append(f"shape mismatches ({len(wrong_shape)}): {wrong_shape[:10]}")
        raise ValueError("the state dict does not fit this CLIPTextEncoder: " + "; ".join(parts)
                         + ". Build the encoder with CLIPTextConfig.from_hf_config(the checkpoint's config).")
    model.load_state_dict(renamed, strict=True)
    return model


# ----------------------------------------------------------------------------- image encoder
@dataclass
class ImageEncoderConfig:
    """Sizes of the small convolutional image encoder. Defined in notebook 04_clip_text_embeddings.

    Each entry of ``widths`` is one stage (two 3x3 convs with GroupNorm and SiLU); every stage but
    the last halves the resolution, so (32, 64, 128) on 32x32 images ends at 8x8, then a global
    average pool and a linear layer give ``out_dim`` features.
    """

    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)
    out_dim: int = 128
    groups: int = 8

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths!r}")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise ValueError(f"widths {bad} are not divisible by groups={self.groups} (GroupNorm); "
                             "use multiples of groups or lower groups")
        if self.in_channels < 1 or self.out_dim < 1:
            raise ValueError("in_channels and out_dim must be positive")


class ImageEncoder(nn.Module):
    """A small conv net: (B, C, H, W) images -> (B, out_dim) features, for 32x32 RGB worlds.

    Defined in notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or ImageEncoderConfig()
        stages: list[nn.Module] = []
        c = config.in_channels
        for i, w in enumerate(config.widths):
            stages += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(config.groups, w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(config.groups, w), nn.SiLU()]
            if i < len(config.widths) - 1:
                stages.append(nn.AvgPool2d(2))  # (B, w, H, W) -> (B, w, H/2, W/2)
            c = w
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(c, config.out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (B, {self.config.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")
        x = self.features(images).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
        return self.head(x)  # (B, C) -> (B, out_dim)


# ----------------------------------------------------------------------------- contrastive model
@dataclass
class ContrastiveOutput:
    """What ``ContrastiveModel`` returns. Defined in notebook 04_clip_text_embeddings.

    ``logits_per_image`` (N_images, N_texts) = scale * cosine similarity; ``logits_per_text`` is
    its transpose; the embeddings are L2-normalised (N, embed_dim).
    """

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor


def _feature_dim(module: nn.Module, explicit: int | None, names: tuple[str, ...], what: str) -> int:
    if explicit is not None:
        return explicit
    config = getattr(module, "config", None)
    for name in names:
        if config is not None and isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise TypeError(f"cannot tell the {what} encoder's output size from its config; pass {what}_dim=...")


class ContrastiveModel(nn.Module):
    """CLIP-style pair of encoders with linear projections into a shared space.

    Texts are embedded by the text encoder's pooled output, images by the image encoder; both are
    projected (no bias, as CLIP) to ``embed_dim`` and L2-normalised. Logits are cosine similarity
    times a learnable temperature ``exp(logit_scale)``, initialised at 1/0.07 and clamped at 100
    as in CLIP. Defined in notebook 04_clip_text_embeddings.
    """

    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module, embed_dim: int = 64,
                 text_dim: int | None = None, image_dim: int | None = None,
                 logit_scale_init: float = math.log(1 / 0.07), max_logit_scale: float = 100.0):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        text_dim = _feature_dim(text_encoder, text_dim, ("hidden_size",), "text")
        image_dim = _feature_dim(image_encoder, image_dim, ("out_dim", "hidden_size"), "image")
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.visual_projection = nn.Linear(image_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.max_logit_scale = max_logit_scale

    def scale(self) -> torch.Tensor:
        """The temperature ``exp(logit_scale)``, clamped at ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_text(self, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, embed_dim) unit vectors."""
        out = self.text_encoder(input_ids, attention_mask=attention_mask)
        pooled = out.pooled if isinstance(out, TextEncoderOutput) else out
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, embed_dim) unit vectors."""
        return F.normalize(self.visual_projection(self.image_encoder(images)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> ContrastiveOutput:
        image_embeds = self.encode_image(images)
        text_embeds = self.encode_text(input_ids, attention_mask)
        logits_per_image = self.scale() * image_embeds @ text_embeds.T  # (N_img, E) @ (E, N_txt)
        return ContrastiveOutput(logits_per_image, logits_per_image.T, image_embeds, text_embeds)


def matching_targets(keys: Sequence, text_keys: Sequence | None = None) -> torch.Tensor:
    """(B, T) bool matrix, True where image i and text j have the same key (for example the caption).

    In a batch of image-caption pairs whose captions repeat, image i matches *every* text with its
    caption, not only text i: pass this matrix to ``clip_loss(..., targets=...)`` so that such
    duplicates are positives rather than false negatives. ``text_keys`` defaults to ``keys``
    (B = T); give it to add texts without an image of their own (hard negatives).
    Defined in notebook 04_clip_text_embeddings.
    """
    text_keys = keys if text_keys is None else text_keys
    codes = {k: i for i, k in enumerate(dict.fromkeys([*keys, *text_keys]))}
    rows = torch.tensor([codes[k] for k in keys])
    cols = torch.tensor([codes[k] for k in text_keys])
    return rows[:, None] == cols[None, :]  # (B,), (T,) -> (B, T)


def clip_loss(logits_per_image: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss for a batch of matching pairs (pair i = row i, column i).

    The mean of cross-entropy over rows (each image picks its text) and over columns (each text
    picks its image). With uninformative (all equal) logits it is ``log(B)``.

    ``targets`` (optional, bool (B, T), from ``matching_targets``) says which texts match which
    images; each row's (and column's) target is spread uniformly over its matches, so repeated
    captions are not false negatives. It may have extra columns, texts that match no image (hard
    negatives such as a caption with its colours swapped): they enter the image-to-text softmax
    only. ``None`` means the identity, CLIP's own case. Defined in notebook 04_clip_text_embeddings.
    """
    if targets is None:
        if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
            raise ValueError(f"logits_per_image must be square (B, B) for B matching pairs, got "
                             f"{tuple(logits_per_image.shape)}")
        targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2
    if targets.shape != logits_per_image.shape or logits_per_image.dim() != 2:
        raise ValueError(f"targets must have the logits' shape {tuple(logits_per_image.shape)}, got "
                         f"{tuple(targets.shape)}; build it with matching_targets(captions)")
    t = targets.to(device=logits_per_image.device, dtype=logits_per_image.dtype)
    if not bool((t.sum(dim=1) > 0).all()):
        raise ValueError("every image (row of targets) needs at least one matching text")
    per_image = t / t.sum(dim=1, keepdim=True)  # each row: a distribution over the matching texts
    matched = t.sum(dim=0) > 0  # texts with an image; the others are negatives only
    per_text = t.T[matched] / t.T[matched].sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits_per_image, per_image)
            + F.cross_entropy(logits_per_image.T[matched], per_text)) / 2


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def zero_shot_classify(model: ContrastiveModel, tokenizer, images: torch.Tensor,
                       class_prompts: Sequence[str] | Sequence[Sequence[str]], batch_size: int = 256,
                       return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Classify images by the class prompt whose text embedding is most similar (CLIP's zero-shot).

    ``class_prompts`` holds one prompt per class (``["a red circle", "a blue square"]``) or a list
    of prompts per class, whose unit embeddings are averaged and renormalised (CLIP's prompt
    ensembling). Returns the predicted class index per image, (N,), and with
    ``return_probs=True`` also the softmax over classes, (N, K). Defined in notebook
    04_clip_text_embeddings.
    """
    if isinstance(class_prompts, str) or not class_prompts:
        raise TypeError("class_prompts must be a non-empty list: one prompt (or one list of prompts) "
                        "per class")
    groups = [[p] if isinstance(p, str) else list(p) for p in class_prompts]
    if any(not g for g in groups):
        raise ValueError("every class needs at least one prompt")
    was_training = model.training
    model.eval()
    try:
        device = _model_device(model)
        class_embeds = []
        for prompts in groups:
            ids = tokenizer(prompts).to(device)
            class_embeds.append(F.normalize(model.encode_text(ids).mean(dim=0), dim=-1))
        text = torch.stack(class_embeds)  # (K, E)
        logits = torch.cat([model.scale() * model.encode_image(images[i:i + batch_size].to(device)) @ text.T
                            for i in range(0, len(images), batch_size)])  # (N, K)
    finally:
        model.train(was_training)
    preds = logits.argmax(dim=-1)
    return (preds, logits.softmax(dim=-1)) if return_probs else preds


@torch.no_grad()
def retrieval_recall_at_k(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                          ks: Sequence[int] = (1, 5, 10), groups: Sequence | None = None) -> dict[str, float]:
    """Recall@k for image->text and text->image retrieval over N matching pairs (row i with row i).

    A query counts as found when a correct item is among the k most cosine-similar ones. With
    ``groups`` (one hashable key per pair, e.g. the caption), every item with the query's key is
    correct, so duplicate captions are not counted as misses. Returns
    ``{"image_to_text@1": ..., "text_to_image@1": ..., ...}``. Defined in notebook
    04_clip_text_embeddings.
    """
    if image_embeds.dim() != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds and text_embeds must both be (N, E) for N pairs, got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    n = image_embeds.shape[0]
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} keys for {n} pairs; give one key per pair")
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T  # (N, N)
    if groups is None:
        correct = torch.eye(n, dtype=torch.bool, device=sim.device)
    else:
        codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        keys = torch.tensor([codes[g] for g in groups], device=sim.device)
        correct = keys[:, None] == keys[None, :]
    result: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(k, n)
        for name, s, c in (("image_to_text", sim, correct), ("text_to_image", sim.T, correct.T)):
            top = s.topk(kk, dim=-1).indices  # (N, k)
            result[f"{name}@{k}"] = c.gather(1, top).any(dim=-1).float().mean().item()
    return result
