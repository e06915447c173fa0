"""Prompt adherence, Frechet distance and recall of the shipped text-to-image model, against guidance.

    python benchmarks/text_to_image_quality.py            # writes benchmarks/results/text_to_image_quality.json
    python benchmarks/text_to_image_quality.py --n 64 --guidance 1 4 --out /tmp/q.json   # a quick look
    python benchmarks/text_to_image_quality.py --unet shapeworld_t2i_unet_77 --n 200 --guidance 4 --out /tmp/first.json

For each guidance scale and for both splits ("train": colour-shape combinations seen in training;
"heldout": each caption names a pair never seen), it draws one image for each of ``--n`` ShapeWorld
captions with the shipped pipeline (``configs/shapeworld-inference.yaml``; 20 DPM-Solver++ steps
unless told otherwise; the same seeds for every scale) and measures them with the course's judges
(``course_lib.evaluate.prompt_eval``): adherence per GenEval category, overall and exact, and the Frechet
distance, KID, precision and recall on the attribute network's features, each beside its
real-versus-real floor. Notebooks 09 (the guidance sweep) and 10 (the final table) plot this file.
``--unet NAME`` measures another U-Net checkpoint of ``data/`` in the same pipeline (for example the
course's first model, ``shapeworld_t2i_unet_77``, which reads all 77 positions), fed the way its
training record says (``mask_padding``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.core.cli import HelpFormatter  # noqa: E402
from course_lib.evaluate.prompt_eval import EVAL_SEED, evaluate_prompts  # noqa: E402
from course_lib.pipeline.shipped import load_shipped_pipeline  # noqa: E402
from course_lib.pipeline.text_to_image import GenerationSettings  # noqa: E402
from course_lib.train.diffusion import load_diffusion_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=200, help="captions per split")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--sampler", default="dpm-solver++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--splits", nargs="+", default=["train", "heldout"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--unet", default=None,
                   help="another U-Net checkpoint of data/ to measure (default: the shipped one)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_to_image_quality.json"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    pipe = load_shipped_pipeline()
    if args.unet is not None:
        pipe = pipe.with_checkpoint(load_diffusion_checkpoint(args.unet))
    rows = []
    result = {"command": "python benchmarks/text_to_image_quality.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, fp32",
              "sampler": args.sampler, "steps": args.steps, "n_per_split": args.n, "eval_seed": EVAL_SEED,
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"{'split':8s} {'guidance':>8s} {'overall':>8s} {'exact':>6s} {'Frechet':>8s} {'floor':>6s} " \
             f"{'recall':>6s} {'prec.':>6s} {'sec':>5s}"
    print(header)
    for scale in args.guidance:
        for split in args.splits:
            start = time.time()
            ev = evaluate_prompts(pipe, args.n, split, GenerationSettings(sampler=args.sampler, steps=args.steps,
                                                                          guidance_scale=scale))
            row = {**ev.as_row(), "seconds": round(time.time() - start, 1)}
            rows.append(row)
            print(f"{split:8s} {scale:8.1f} {row['overall']:8.3f} {row['exact']:6.3f} {row['Frechet']:8.2f} "
                  f"{row['Frechet floor']:6.2f} {row['recall']:6.3f} {row['precision']:6.3f} {row['seconds']:5.0f}",
                  flush=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
