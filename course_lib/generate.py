"""Text to image from the command line, with every part built in the course. Defined in notebook 10_full_sampler.

    python -m course_lib.generate "a red circle above a blue square" --sampler dpm-solver++ \\
        --steps 20 --guidance 4 --seed 0 --out out.png

Edit an image instead (notebook 13_beyond_text_to_image): ``--init-image in.png --strength 0.6``
repaints it by the prompt (img2img, SDEdit); ``--mask mask.png`` (white = repaint) repaints only
that region (inpainting). The files must have the model's image size. ``--lora NAME_OR_FILE``
merges a LoRA made for this U-Net (``scripts/train_lora.py``; shipped: shapeworld_lora_green_circle).

One image per prompt unless ``--num-images``; several images are saved as one grid. ``--bf16``
runs the U-Net in bfloat16 (SD's ``use_bf16``); ``--config`` builds the model from another
SD-style YAML file, which must agree with what its checkpoints record unless ``--no-strict``.
Mistakes (a broken config or weights file, a missing GPU, ...) print one line saying what to do,
without a traceback; words the shipped ShapeWorld model never saw are warned by name.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.core.cli import HelpFormatter
from course_lib.diffusion.guidance import available_styles
from course_lib.diffusion.samplers import available_samplers
from course_lib.models.mmdit import MMDiT
from course_lib.models.tokenizer import PromptTruncatedWarning, UnknownWordsWarning, warn_unknown_words
from course_lib.pipeline.config import SHIPPED_CONFIG, ConfigMismatchWarning, build_from_config, load_config
from course_lib.pipeline.editing import load_image
from course_lib.pipeline.lora import apply_lora
from course_lib.pipeline.settings import GenerationSettings
from course_lib.worlds.shapeworld import caption_words


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m course_lib.generate", description=__doc__,
                                formatter_class=HelpFormatter)
    d = GenerationSettings()
    p.add_argument("prompt", help='the prompt ("" for an unconditional sample)')
    p.add_argument("--negative", default=d.negative_prompt, help="negative prompt")
    p.add_argument("--style", default=d.style, choices=available_styles())
    p.add_argument("--sampler", default=d.sampler, choices=available_samplers(),
                   help="(default: the model's own: dpm-solver++, or flow-euler for a rectified-flow model such as "
                        "configs/shapeworld-mmdit-flow.yaml)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--guidance", type=float, default=d.guidance_scale, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-images", type=int, default=d.images_per_prompt)
    p.add_argument("--init-image", metavar="PATH",
                   help="img2img: start from this PNG/JPEG (RGB, the model's image size) instead of pure noise "
                        "(default: none, text to image)")
    p.add_argument("--strength", type=float, default=d.strength,
                   help="with --init-image: how much to repaint, 0 keeps the image, 1 repaints from the "
                        "first step (default: 0.8, or 1.0 with --mask, as diffusers)")
    p.add_argument("--mask", metavar="PATH",
                   help="inpainting: a PNG/JPEG of the init image's size, white (>= 50%% grey) = repaint, "
                        "black = keep (default: none, the whole image)")
    p.add_argument("--lora", metavar="PATH",
                   help="a LoRA for this U-Net (a .safetensors file made by scripts/train_lora.py, or the name "
                        "of a shipped one such as shapeworld_lora_green_circle), merged into its weights "
                        "(default: none)")
    p.add_argument("--bf16", action="store_true", help="run the U-Net in bfloat16")
    p.add_argument("--config", default=str(SHIPPED_CONFIG), help="an SD-style YAML config")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="build even where the config differs from what the checkpoints record (warned)")
    p.add_argument("--out", default="out.png", help="where to save the image (or grid)")
    return p.parse_args(argv)


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` that says what this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a device ({err}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA GPU that PyTorch can use "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"numbered from 0; use --device cuda:0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    return dev


def _shapeworld_words(config_path: str) -> frozenset[str] | None:
    """The words of ShapeWorld captions when the config's text side is the shipped ShapeWorld tokenizer."""
    try:
        params = load_config(config_path)["model"]["params"]["cond_stage_config"]["params"]
    except (KeyError, TypeError, ValueError):
        return None
    return caption_words() if params.get("tokenizer") == "tokenizer" else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = GenerationSettings(negative_prompt=args.negative, style=args.style, sampler=args.sampler,
                                  steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                                  images_per_prompt=args.num_images, strength=args.strength)
    try:
        settings.validate()
        if args.init_image is None and (args.mask is not None or args.strength is not None):
            raise ValueError(f"{'--mask' if args.mask is not None else '--strength'} needs --init-image PATH "
                             "(the image to edit)")
        device = check_device(args.device)
        with warnings.catch_warnings(record=True) as caught:
            for kind in (PromptTruncatedWarning, UnknownWordsWarning, ConfigMismatchWarning):
                warnings.simplefilter("always", kind)
            pipe = build_from_config(args.config, use_bf16=args.bf16 or None, device=device, strict=args.strict)
            if args.lora is not None:
                apply_lora(pipe, args.lora, merge=True)     # refuses a LoRA made for another U-Net
            words = _shapeworld_words(args.config)
            if words is not None:
                for text in (args.prompt, args.negative):
                    warn_unknown_words(text, words, "the ShapeWorld model")
            edit = {}
            if args.init_image is not None:
                edit["init_image"] = load_image(args.init_image, "RGB", pipe.image_size)
                if args.mask is not None:
                    edit["mask"] = load_image(args.mask, "L", pipe.image_size)
            result = pipe(args.prompt, settings, **edit)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # e.g. out of memory on the device, a file that cannot be read
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    path = result.save(args.out)
    network = "MMDiT" if isinstance(pipe.unet, MMDiT) else "U-Net"
    print(f"saved {len(result.images)} image(s) to {path} ({result.model_calls} {network} calls, "
          f"{result.seconds:.1f} s, {'bf16' if pipe.use_bf16 else 'fp32'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
