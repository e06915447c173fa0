"""transformers' CLIP text encoder in the course's: its config and the names of its weights.

Defined in notebook 04_clip_text_embeddings.

The course's ``CLIPTextEncoder`` (``course_lib.models.clip_text``) uses transformers' parameter names,
so its files need two renaming rules only (``load_hf_clip_text_state_dict``), and transformers'
config fields keep their names (``clip_text_config_from_hf``, with transformers' pooling rule).
Notebook 04 compares the encoder with transformers' own; notebook 11 reads SD's ``text_encoder/``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from course_lib.models.clip_text import CLIPTextConfig, CLIPTextEncoder

__all__ = ["HF_PREFIX", "clip_text_config_from_hf", "load_hf_clip_text_state_dict"]

HF_PREFIX = "text_model."


def clip_text_config_from_hf(hf_config: object) -> CLIPTextConfig:
    """The course's ``CLIPTextConfig`` from a transformers ``CLIPTextConfig`` (an object, or a dict such
    as a ``config.json``). Formerly ``CLIPTextConfig.from_hf_config``.

    Follows transformers' pooling rule: ``eos_token_id == 2`` (old configs, SD v1 and 2) means
    ``argmax`` pooling, anything else the first position of ``eos_token_id``.
    Defined in notebook 04_clip_text_embeddings.
    """
    get = hf_config.get if isinstance(hf_config, Mapping) else lambda k, d=None: getattr(hf_config, k, d)
    eos = get("eos_token_id", 49407)
    return CLIPTextConfig(vocab_size=get("vocab_size"), max_position_embeddings=get("max_position_embeddings"),
                          hidden_size=get("hidden_size"), num_hidden_layers=get("num_hidden_layers"),
                          num_attention_heads=get("num_attention_heads"), intermediate_size=get("intermediate_size"),
                          layer_norm_eps=get("layer_norm_eps", 1e-5), hidden_act=get("hidden_act", "quick_gelu"),
                          eos_token_id=eos, pooling="argmax" if eos == 2 else "first_eos")


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
                         + ". Build the encoder with clip_text_config_from_hf(the checkpoint's config).")
    model.load_state_dict(renamed, strict=True)
    return model
