"""The pipeline layer: every part joined into a text-to-image model, and the ways to build one.

The pipeline (``text_to_image``, with its ``settings`` and image ``editing``), SD-style YAML configs
(``config``, ``config_parts``, ``config_checks``), the shipped model (``shipped``), public diffusers
folders (the ``convert`` package: the only place that knows diffusers' and transformers' names,
and the only one allowed to import those packages), LoRA files on a pipeline
(``lora``) and the Jupyter widget (``widgets``). It may import every layer below it (core, worlds,
models, diffusion, evaluate, train); only ``course_lib.generate`` imports it.
"""

from course_lib.pipeline.config import ConfigError, build_from_config, load_config
from course_lib.pipeline.convert import load_diffusers_pipeline
from course_lib.pipeline.editing import load_image
from course_lib.pipeline.lora import apply_lora
from course_lib.pipeline.settings import GenerationResult, GenerationSettings
from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.pipeline.text_to_image import TextToImagePipeline

__all__ = ["ConfigError", "build_from_config", "load_config", "load_diffusers_pipeline", "load_image", "apply_lora",
           "GenerationResult", "GenerationSettings", "load_shipped_pipeline", "TextToImagePipeline"]
