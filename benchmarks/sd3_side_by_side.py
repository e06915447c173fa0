"""SD 1-2's recipe against SD 3's, on the same budget: notebook 12's side-by-side table.

    python benchmarks/sd3_side_by_side.py                 # writes benchmarks/results/sd3_side_by_side.json
    python benchmarks/sd3_side_by_side.py --n 64 --steps 4 --out /tmp/s.json   # a quick look

Three text-to-image denoisers trained by ``scripts/train_text_to_image.py`` on the same ShapeWorld
latents for the same wall-clock budget (``configs/train/shapeworld_{unet_ddpm_budget,mmdit_flow,
unet_flow}.yaml``: 20 minutes on one CPU thread each):

- the course's U-Net learning the noise (DDPM, SD 1-2), sampled with DDIM (first order, the ODE's Euler
  step in DDIM's variables) and DPM-Solver++(2M) (its best few-step solver);
- SD 3's multimodal diffusion transformer (MMDiT) with rectified flow, sampled with flow Euler;
- the same U-Net with rectified flow, to separate the objective from the network;

and, for reference, the shipped U-Net of notebooks 09-10 (the DDPM recipe given 75 minutes on two
threads). Each configuration draws one image for each of ``--n`` captions per split at each number of
steps, with guidance 4 (or the guidance its label names), and is measured with the course's judges
(``course_lib.evaluate.prompt_eval``): adherence overall and exact, and the Frechet distance on the attribute
network's features beside its real-versus-real floor. The file also records what each model's training
gave: its steps, images per second and parameters, from the checkpoint's JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import count_parameters
from course_lib.evaluate.prompt_eval import EVAL_SEED, evaluate_prompts
from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.pipeline.text_to_image import GenerationSettings
from course_lib.train.diffusion import load_diffusion_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# (label, checkpoint in data/, sampler, sampler options, guidance scale: None = --guidance)
CONFIGURATIONS = [
    ("U-Net + DDPM, DDIM (trailing)", "shapeworld_unet_ddpm_20min", "ddim",
     {"timestep_spacing": "trailing", "steps_offset": 0}, None),
    ("U-Net + DDPM, DPM-Solver++", "shapeworld_unet_ddpm_20min", "dpm-solver++", {}, None),
    ("MMDiT + flow, Euler", "shapeworld_mmdit_flow", "flow-euler", {}, None),
    ("MMDiT + flow, Euler shift 3", "shapeworld_mmdit_flow", "flow-euler", {"shift": 3.0}, None),
    ("U-Net + flow, Euler", "shapeworld_unet_flow", "flow-euler", {}, None),
    ("shipped U-Net + DDPM (75 min, 2 threads), DPM-Solver++", "shapeworld_t2i_unet", "dpm-solver++", {}, None),
    # guidance 2: the flow models overshoot at 4 Euler steps with guidance 4 (notebook 12, section 5)
    ("U-Net + DDPM, DPM-Solver++, guidance 2", "shapeworld_unet_ddpm_20min", "dpm-solver++", {}, 2.0),
    ("MMDiT + flow, Euler, guidance 2", "shapeworld_mmdit_flow", "flow-euler", {}, 2.0),
    ("U-Net + flow, Euler, guidance 2", "shapeworld_unet_flow", "flow-euler", {}, 2.0),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=500, help="captions per split")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 20], help="sampler steps")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--splits", nargs="+", default=["train", "heldout"])
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                   help="measure only the configurations whose label starts with one of these; the other rows of "
                        "an existing --out file are kept (their commands are listed under 'merged_with')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sd3_side_by_side.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    base = load_shipped_pipeline()
    rows: list[dict] = []
    models: dict[str, dict] = {}
    result = {"command": "python benchmarks/sd3_side_by_side.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s), fp32",
              "guidance": args.guidance, "n_per_split": args.n, "eval_seed": EVAL_SEED, "models": models,
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.is_file():          # keep the rows of the configurations not measured now
        old = json.loads(out.read_text())
        keep = [r for r in old["rows"] if not any(r["configuration"].startswith(o) for o in args.only)]
        rows.extend(keep)
        result["command"] = old["command"]
        result["merged_with"] = [*old.get("merged_with", []), "python benchmarks/sd3_side_by_side.py "
                                 + shlex.join(sys.argv[1:] if argv is None else argv)]
    print(f"{'configuration':44s} {'steps':>5s} {'split':8s} {'overall':>7s} {'exact':>6s} {'Frechet':>8s} "
          f"{'floor':>6s} {'sec':>5s}")
    for name in dict.fromkeys(c[1] for c in CONFIGURATIONS):     # what each run's training gave, from its JSON
        ck = load_diffusion_checkpoint(name)
        metrics = ck.meta.get("metrics", {})
        models[name] = {"denoiser": type(ck.model).__name__, "parameters": count_parameters(ck.model),
                        "objective": ck.prediction_type, "train_steps": metrics.get("steps"),
                        "train_minutes": metrics.get("train_minutes"),
                        "images_per_second": metrics.get("images_per_second"), "threads": metrics.get("threads"),
                        "command": ck.meta.get("command")}
    for label, name, sampler, options, guidance in CONFIGURATIONS:
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        pipe = base.with_checkpoint(load_diffusion_checkpoint(name))
        pipe.sampler_options = {sampler: dict(options)}
        for steps in args.steps:
            for split in args.splits:
                start = time.time()
                scale = args.guidance if guidance is None else guidance
                ev = evaluate_prompts(pipe, args.n, split, GenerationSettings(sampler=sampler, steps=steps,
                                                                              guidance_scale=scale))
                a, d = ev.adherence, ev.distances
                row = {"configuration": label, "checkpoint": name, "sampler": sampler, "options": options,
                       "guidance": scale, "steps": steps, "split": split, "overall": a["overall"], "exact": a["exact"],
                       "Frechet": d["Frechet"], "Frechet floor": d["Frechet floor"],
                       "seconds": round(time.time() - start, 1)}
                rows.append(row)
                print(f"{label[:44]:44s} {steps:5d} {split:8s} {row['overall']:7.3f} {row['exact']:6.3f} "
                      f"{row['Frechet']:8.2f} {row['Frechet floor']:6.2f} {row['seconds']:5.0f}", flush=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
