"""Building the course's pipeline from a diffusers folder, and downloading one. Defined in notebook 11_real_weights.

``load_diffusers_pipeline(folder)`` checks ``model_index.json``, maps every part's config first (cheap,
so that a folder that does not fit fails before any weights are read), then fills the course's own
networks with the folder's weights and gives each sampler the folder's scheduler settings where it
can follow them (``sampler_options``; a sampler that cannot is refused by name). ``download_pipeline``
fetches only configs, tokenizer files and safetensors weights from the Hugging Face Hub. The rules
are in the package's docstring (``course_lib.pipeline.convert``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.diffusion.samplers import available_samplers
from course_lib.models.clip_text import CLIPTextEncoder
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderKL
from course_lib.pipeline.convert.clip import load_hf_clip_text_state_dict
from course_lib.pipeline.convert.configs import (
    load_tokenizer,
    text_config_from_transformers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from course_lib.pipeline.convert.files import (
    PART_CLASSES,
    PARTS,
    WEIGHT_FILES,
    _load_module_weights,
    _read_json,
    _read_weights,
    _weight_files,
)
from course_lib.pipeline.convert.scheduler import (
    pipeline_scheduler_config,
    sampler_options,
    schedule_from_config,
    scheduler_sampler,
)
from course_lib.pipeline.text_to_image import TextToImagePipeline

__all__ = ["load_diffusers_pipeline", "download_pipeline"]


def _check_model_index(folder: Path) -> None:
    index = _read_json(folder / "model_index.json", "model_index.json")
    cls = index.get("_class_name", "StableDiffusionPipeline")
    if cls != "StableDiffusionPipeline":
        raise CheckpointError(f"model_index.json: _class_name {cls!r} is not a StableDiffusionPipeline; the course "
                              "runs text-to-image Stable Diffusion 1.x and 2.x (SDXL, inpainting and others add parts "
                              "it does not have)")
    for part in PARTS:
        entry = index.get(part)
        if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[1] is None:
            raise CheckpointError(f"model_index.json: no {part!r} entry; a Stable Diffusion folder has "
                                  f"{', '.join(PARTS)}")
        if part in PART_CLASSES and entry[1] not in PART_CLASSES[part]:
            raise CheckpointError(f"model_index.json: {part} is a {entry[1]!r}, not a {PART_CLASSES[part][0]}")
        if not (folder / part).is_dir():
            raise CheckpointError(f"{part}: the folder {folder / part} is missing")


def load_diffusers_pipeline(folder: str | Path, *, use_bf16: bool = False, device: str | torch.device = "cpu",
                            variant: str | None = None) -> TextToImagePipeline:
    """The course's ``TextToImagePipeline`` running the weights of a diffusers Stable Diffusion folder.

    Every network is the course's own (notebooks 03, 04, 08); only the numbers come from the folder.
    ``variant``: e.g. "fp16" to read ``diffusion_pytorch_model.fp16.safetensors`` (cast to float32).
    ``use_bf16`` runs the U-Net in bfloat16 (see ``TextToImagePipeline``). Raises a
    ``CheckpointError`` naming the first part that does not fit. Defined in notebook 11_real_weights.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; download one with download_pipeline(model_id)")
    _check_model_index(folder)

    # Configs first (cheap), so that a folder that does not fit fails before any weights are read.
    unet_config = unet_config_from_diffusers(_read_json(folder / "unet" / "config.json", "unet"))
    vae_config = vae_config_from_diffusers(_read_json(folder / "vae" / "config.json", "vae"))
    text_config = text_config_from_transformers(_read_json(folder / "text_encoder" / "config.json", "text_encoder"))
    tokenizer = load_tokenizer(folder / "tokenizer")
    schedule, prediction_type = schedule_from_config(folder)
    if tokenizer.context_length > text_config.max_position_embeddings:
        raise CheckpointError(f"tokenizer: model_max_length={tokenizer.context_length} is longer than the text "
                              f"encoder's {text_config.max_position_embeddings} positions")
    for part in ("unet", "vae", "text_encoder"):  # fail on a missing or pickled file before reading any
        _weight_files(folder / part, WEIGHT_FILES[part], variant)

    unet = UNet(unet_config)
    _load_module_weights(unet, _read_weights(folder / "unet", WEIGHT_FILES["unet"], variant), "unet")
    unet.training_schedule = schedule       # samplers.sample checks the schedule it is given against this
    vae = AutoencoderKL(vae_config)
    _load_module_weights(vae, _read_weights(folder / "vae", WEIGHT_FILES["vae"], variant), "vae")
    text_encoder = CLIPTextEncoder(text_config)
    try:
        load_hf_clip_text_state_dict(
            text_encoder, _read_weights(folder / "text_encoder", WEIGHT_FILES["text_encoder"], variant))
    except ValueError as err:
        raise CheckpointError(f"text_encoder: {err}") from None

    # each sampler gets the folder's scheduler settings where it can follow them (see sampler_options)
    options: dict[str, dict[str, Any]] = {}
    for name in available_samplers(flow=False):    # SD 1-2 folders: the samplers of noise-prediction models
        try:
            config = pipeline_scheduler_config(folder, name, warn=name == scheduler_sampler(folder))
            options[name] = sampler_options(config, name)
        except CheckpointError as err:  # that sampler cannot copy this folder's scheduler: it refuses to run
            options[name] = {"refused": f"the {name!r} sampler cannot reproduce {folder.name}'s scheduler: {err}; "
                                        "choose another sampler"}
    kwargs: dict[str, Any] = {"sampler_options": options}
    try:
        return TextToImagePipeline(tokenizer, text_encoder, unet, vae, schedule, prediction_type,
                                   use_bf16=use_bf16, device=device, **kwargs)
    except ValueError as err:
        raise CheckpointError(f"{folder.name}: the parts do not belong together: {err}") from None


# ----------------------------------------------------------------------------------------------
# Downloading (Colab)
# ----------------------------------------------------------------------------------------------


def _download_patterns(variant: str | None) -> list[str]:
    suffix = f".{variant}" if variant else ""
    patterns = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*.json", "tokenizer/merges.txt"]
    for part, stem in WEIGHT_FILES.items():
        patterns += [f"{part}/config.json", f"{part}/{stem}{suffix}.safetensors",
                     f"{part}/{stem}{suffix}.safetensors.index.json", f"{part}/{stem}{suffix}-*-of-*.safetensors"]
    return patterns


def download_pipeline(model_id: str, *, variant: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download the parts of a diffusers Stable Diffusion model from the Hugging Face Hub; return its folder.

    Only configs, tokenizer files and safetensors weights are fetched (no pickles, no single-file
    checkpoints): about 5.2 GB for SD 1.5 or 2.1-base in float32, half with ``variant="fp16"``.
    Already downloaded files are reused. Without internet it raises a ``ConnectionError`` that
    says so in one sentence. Defined in notebook 11_real_weights.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("download_pipeline needs huggingface_hub: pip install huggingface_hub") from None
    try:
        path = Path(snapshot_download(model_id, allow_patterns=_download_patterns(variant), cache_dir=cache_dir))
    except Exception as err:  # offline, unknown or gated model: one clear sentence, the cause chained
        kind = type(err).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise ConnectionError(f"the Hugging Face Hub has no public model {model_id!r} ({kind}); check the id "
                                  "(Stable Diffusion 2 now lives at sd2-community/..., 1.5 at sd-legacy/...)") from err
        raise ConnectionError(f"could not download {model_id!r} from the Hugging Face Hub ({kind}): this machine "
                              "seems to be offline; load a local folder with load_diffusers_pipeline instead") from err
    for part, stem in WEIGHT_FILES.items():
        try:
            _weight_files(path / part, stem, variant)
        except CheckpointError as err:
            raise CheckpointError(f"{model_id}: {err} (the Hub model has no safetensors weights for {part}"
                                  f"{' in variant ' + variant if variant else ''})") from None
    return path
