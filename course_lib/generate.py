"""Text to image from the command line, with every part built in the course. Defined in notebook 10_full_sampler.

    python -m course_lib.generate "a red circle above a blue square" --sampler dpm-solver++ \\
        --steps 20 --guidance 4 --seed 0 --out out.png

One image per prompt unless ``--num-images``; several images are saved as one grid. ``--bf16``
runs the U-Net in bfloat16 (SD's ``use_bf16``); ``--config`` builds the model from another
SD-style YAML file.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .checkpoints import CheckpointError
from .config import SHIPPED_CONFIG, build_from_config
from .guidance import available_styles
from .pipeline import GenerationSettings
from .samplers import available_samplers
from .tokenizer import PromptTruncatedWarning


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m course_lib.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = GenerationSettings()
    p.add_argument("prompt", help='the prompt ("" for an unconditional sample)')
    p.add_argument("--negative", default=d.negative_prompt, help="negative prompt")
    p.add_argument("--style", default=d.style, choices=available_styles())
    p.add_argument("--sampler", default=d.sampler, choices=available_samplers())
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--guidance", type=float, default=d.guidance_scale, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-images", type=int, default=d.images_per_prompt)
    p.add_argument("--bf16", action="store_true", help="run the U-Net in bfloat16")
    p.add_argument("--config", default=str(SHIPPED_CONFIG), help="an SD-style YAML config")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out.png", help="where to save the image (or grid)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = GenerationSettings(negative_prompt=args.negative, style=args.style, sampler=args.sampler,
                                  steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                                  images_per_prompt=args.num_images)
    try:
        settings.validate()
        pipe = build_from_config(args.config, use_bf16=args.bf16 or None, device=args.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            result = pipe(args.prompt, settings)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    path = result.save(args.out)
    print(f"saved {len(result.images)} image(s) to {path} ({result.model_calls} U-Net calls, "
          f"{result.seconds:.1f} s, {'bf16' if pipe.use_bf16 else 'fp32'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
