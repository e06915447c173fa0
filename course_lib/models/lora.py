"""LoRA by hand: low-rank adapters on the attention projections of the course's U-Net.

Defined in notebook 13_beyond_text_to_image.

Fine-tuning all 1.76 million weights of the U-Net to teach it one new thing is costly and easily
breaks what it knew. LoRA (Hu et al. 2021) freezes every weight and learns, for a few chosen
``nn.Linear`` layers ``y = W x + b`` (W: out x in), a low-rank correction:

    y = W x + b + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << min(in, out)

``B`` starts at zero, so a fresh adapter changes nothing; training moves only ``A`` and ``B``
(``r * (in + out)`` numbers per layer instead of ``in * out``). Afterwards ``B A * alpha / r`` can
be folded into ``W`` (``merge_lora``: no extra cost at inference) and taken out again
(``unmerge_lora``). As in Stable Diffusion's LoRAs, the adapted layers are the attention
projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of the cross-attention (``attn2``: where
the prompt enters), optionally of the self-attention (``attn1``) too.

    layers = add_lora(pipe.unet, rank=4, alpha=4)            # cross-attention projections
    count_lora_parameters(pipe.unet)                          # LoRAParameterCount(lora=..., base=...)
    ... train (course_lib.train.diffusion.train_diffusion_model trains only what requires grad) ...
    save_lora("green_circle.safetensors", pipe.unet, base_model="shapeworld_t2i_unet")
    load_lora(other_unet, "green_circle.safetensors")        # refuses a LoRA made for another model

The file is safetensors: the tensors ``<layer>.lora_A`` / ``<layer>.lora_B`` and, in its header's
metadata, the rank, alpha, targets, every adapted layer's name and shape and a signature of the
base weights it was trained on, so that loading it into another model is a clear error.

The layers and add/merge/remove are in ``lora_layers``, the file format in ``lora_file``; every
public name of both is importable from here. Putting a LoRA into a pipeline by file or shipped name
is ``course_lib.pipeline.lora.apply_lora``; the training data and the measurements of notebook 13's
adapter are in ``course_lib.train.lora`` and ``course_lib.evaluate.concept_eval``.
"""

from __future__ import annotations

from course_lib.models.lora_file import LORA_FORMAT, load_lora, lora_metadata, lora_state_dict, read_lora, save_lora
from course_lib.models.lora_layers import (
    CROSS_ATTENTION_TARGETS,
    SELF_ATTENTION_TARGETS,
    TARGET_PRESETS,
    LoRAError,
    LoRALinear,
    LoRAParameterCount,
    add_lora,
    count_lora_parameters,
    lora_layers,
    merge_lora,
    remove_lora,
    resolve_targets,
    unmerge_lora,
)

__all__ = [
    "CROSS_ATTENTION_TARGETS", "SELF_ATTENTION_TARGETS", "TARGET_PRESETS", "LORA_FORMAT",
    "LoRALinear", "LoRAError", "LoRAParameterCount", "resolve_targets", "add_lora", "lora_layers",
    "lora_state_dict", "lora_metadata", "save_lora", "read_lora", "load_lora", "merge_lora",
    "unmerge_lora", "remove_lora", "count_lora_parameters",
]
