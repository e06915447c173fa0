"""Loading public weights: one package that maps names, nowhere else (notebook 11_real_weights).

A Stable Diffusion checkpoint in diffusers' format (what the Hugging Face Hub serves and what
``StableDiffusionPipeline.save_pretrained`` writes) is a folder of parts::

    model_index.json                      which class each part is
    unet/config.json + diffusion_pytorch_model.safetensors
    vae/config.json + diffusion_pytorch_model.safetensors
    text_encoder/config.json + model.safetensors
    tokenizer/vocab.json + merges.txt (or tokenizer.json), tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json

    pipe = load_diffusers_pipeline(folder)            # the course's own TextToImagePipeline
    pipe("The hare is juggling balls", style="sai-fantasy art", sampler="ddim", steps=20)

The rules, all of them:

1. **Weight names need no mapping.** The course's U-Net and autoencoder use diffusers' parameter
   names, its text encoder transformers' names; the only renaming is dropping the ``text_model.``
   prefix that transformers 4.x files have and 5.x files do not (``clip.load_hf_clip_text_state_dict``).
2. **U-Net config.** ``CrossAttnDownBlock2D`` at level ``i`` puts ``i`` in ``attention_levels``
   (``DownBlock2D``: no attention), and ``up_block_types`` must mirror the down blocks;
   diffusers' ``attention_head_dim`` is really the *number of heads* (one int, SD 1: 8, or one per
   level, SD 2: ``[5, 10, 20, 20]`` = 64 channels per head), so it becomes ``num_attention_heads``;
   ``transformer_layers_per_block`` becomes ``transformer_depth``; the sizes keep their names.
   Every setting the course's U-Net has built in (sinusoidal time embedding with cos first, SiLU,
   no class or added embeddings, ...) must have diffusers' default value, or loading stops.
3. **Autoencoder config.** Sizes and ``scaling_factor`` keep their names; the blocks must be
   ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``.
4. **Text encoder config.** transformers' ``CLIPTextConfig`` fields keep their names
   (``clip.clip_text_config_from_hf``): SD 1's CLIP ViT-L/14 (12 layers, width 768, quick_gelu) and
   SD 2's OpenCLIP ViT-H/14 (width 1024, exact gelu). SD 2 reads the *penultimate* layer: its
   folder simply stores 23 of the 24 layers, so ``last_hidden_state`` is that layer.
5. **Tokenizer.** The same byte-level BPE; the pad token is read the way transformers reads it
   (``special_tokens_map.json`` first, then ``tokenizer_config.json``): SD 1 pads with
   ``<|endoftext|>``, SD 2 with ``!``.
6. **Scheduler config.** ``beta_schedule``, ``beta_start``, ``beta_end`` (or ``trained_betas``)
   give the noise schedule, ``prediction_type`` what the U-Net predicts (SD 2.x 768: ``v_prediction``);
   the timestep conventions become sampler options (``sampler_options``).

Weights are read from safetensors only, never from pickled ``.bin`` files (unpickling runs code).
A folder that does not fit raises a ``CheckpointError`` (``course_lib.core.checkpoints``') naming
the first part that does not.

This package is the only part of the course that knows diffusers' and transformers' names, and the
only one that may import those packages: ``files`` reads a folder, ``configs`` maps the networks'
configs and the tokenizer (rules 2 to 5), ``clip`` the text encoder's weights and config (rules 1
and 4), ``scheduler`` the scheduler (rule 6), ``loader`` builds the pipeline and downloads folders.
Every public name of these modules is importable from ``course_lib.pipeline.convert``.
"""

from course_lib.core.checkpoints import CheckpointError
from course_lib.pipeline.convert.clip import HF_PREFIX, clip_text_config_from_hf, load_hf_clip_text_state_dict
from course_lib.pipeline.convert.configs import (
    load_tokenizer,
    text_config_from_transformers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from course_lib.pipeline.convert.files import PART_CLASSES, PARTS, WEIGHT_FILES
from course_lib.pipeline.convert.loader import download_pipeline, load_diffusers_pipeline
from course_lib.pipeline.convert.scheduler import (
    SAMPLER_SCHEDULERS,
    SCHEDULER_SETTINGS,
    SUPPORTED_TRAIN_TIMESTEPS,
    SchedulerSettingWarning,
    pipeline_scheduler_config,
    sampler_options,
    schedule_from_config,
    scheduler_sampler,
)

__all__ = [
    "CheckpointError",
    "load_diffusers_pipeline",
    "unet_config_from_diffusers",
    "vae_config_from_diffusers",
    "text_config_from_transformers",
    "clip_text_config_from_hf",
    "load_hf_clip_text_state_dict",
    "HF_PREFIX",
    "load_tokenizer",
    "schedule_from_config",
    "sampler_options",
    "scheduler_sampler",
    "pipeline_scheduler_config",
    "SchedulerSettingWarning",
    "download_pipeline",
    "PARTS",
    "PART_CLASSES",
    "WEIGHT_FILES",
    "SAMPLER_SCHEDULERS",
    "SCHEDULER_SETTINGS",
    "SUPPORTED_TRAIN_TIMESTEPS",
]
