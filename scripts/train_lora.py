"""Teach the shipped ShapeWorld text-to-image model a colour-shape pair it never saw, with a LoRA
(notebook 13), and ship the adapter as data/shapeworld_lora_green_circle.*.

    python scripts/train_lora.py                               # the shipped adapter (see its .json)
    python scripts/train_lora.py --steps 20 --images 256 --eval-captions 0 --eval-seen 0 --eval-neighbours 0 \
        --folder /tmp/lora                                     # a quick try

The U-Net of notebooks 09-10 never saw a green circle (a held-out pair, course_lib/worlds/shapeworld.py).
Its weights stay frozen; low-rank adapters (course_lib/models/lora.py) on the attention projections learn
from ShapeWorld scenes whose captions name the pair (``--replay`` mixes in scenes of the seen
split). Training batches are made the way the base model's were (notebook 09:
``LatentCaptionData.batches`` with the shipped autoencoder's latents and the shipped text
encoder's states, cached) and trained by ``train_diffusion_model``, which moves only what requires
grad. Before and after, the pipeline draws captions naming the pair (how often the judge sees it
drawn, and the adherence report), captions of the seen split (``evaluate_prompts``) and captions of
two seen pairs that share a word with it (for green circle: red circle, green square), where what
the adapter makes it forget shows first; 20 DPM-Solver++ steps at guidance 4. The adapter is saved with
``save_lora`` (safetensors; the header names the base checkpoint and its layers) and recorded in
data/manifest.json with its checksum, the measurements in its .json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course_lib.core.checkpoints import read_manifest, record_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.paths import data_dir
from course_lib.core.utils import seed_everything
from course_lib.evaluate.adherence import score_adherence
from course_lib.evaluate.concept_eval import concept_adherence
from course_lib.evaluate.prompt_eval import evaluate_prompts
from course_lib.models.lora import TARGET_PRESETS, add_lora, count_lora_parameters, save_lora
from course_lib.pipeline.config import SHIPPED_CONFIG
from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.train.diffusion import TrainingConfig, train_diffusion_model
from course_lib.train.lora import concept_data
from course_lib.train.run_config import parse_args, window_means
from course_lib.train.text_to_image import SHIPPED_T2I_UNET, TRAIN_SEED, LatentCaptionData, TextConditioner
from course_lib.worlds.shapeworld import COLOR_NAMES, SHAPES, is_held_out, parse_caption

GUIDANCE, STEPS, SAMPLER = 4.0, 20, "dpm-solver++"   # as tests/test_t2i_shipped.py and the benchmark


def neighbours(color: str, shape: str) -> list[tuple[str, str]]:
    """Two seen pairs that share a word with the taught one: its shape in another colour, its colour
    on another shape (for green circle: red circle, green square)."""
    other_color = next(c for c in COLOR_NAMES if c != color and not is_held_out(c, shape))
    other_shape = next(s for s in SHAPES if s != shape and not is_held_out(color, s))
    return [(other_color, shape), (color, other_shape)]


def measure(pipe, color: str, shape: str, n_concept: int, n_seen: int, n_neighbours: int) -> dict:
    """Adherence on ``n_concept`` captions naming the pair, on ``n_seen`` seen-split captions and on
    ``n_neighbours`` captions for each of the two ``neighbours`` of the pair."""
    settings = {"guidance_scale": GUIDANCE, "steps": STEPS, "sampler": SAMPLER}
    out: dict = {}
    if n_concept:
        c = concept_adherence(pipe, color, shape, n_concept, **settings)
        out["concept"] = {"captions": n_concept, "drawn": round(c.drawn, 3), **c.report.as_row()}
    for other in neighbours(color, shape) if n_neighbours else []:
        c = concept_adherence(pipe, *other, n_neighbours, **settings)
        out[" ".join(other)] = {"captions": n_neighbours, "drawn": round(c.drawn, 3), **c.report.as_row()}
    if n_seen:
        ev = evaluate_prompts(pipe, n_seen, "train", **settings)
        out["seen"] = {"captions": n_seen, **{k: round(v, 3) for k, v in ev.adherence.items()},
                       "frechet": ev.distances["Frechet"], "frechet_floor": ev.distances["Frechet floor"]}
        # The seen captions that share a word with the pair: where forgetting would show first.
        near = [i for i, cap in enumerate(ev.captions)
                if any(c == color or s == shape for c, s in parse_caption(cap).objects)]
        if near:
            rep = score_adherence(ev.images[near] * 2 - 1, [ev.captions[i] for i in near])
            out["seen_sharing_a_word"] = {"captions": len(near), **rep.as_row()}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pair", nargs=2, default=["green", "circle"], metavar=("COLOUR", "SHAPE"),
                   help="the colour-shape pair to teach")
    p.add_argument("--images", type=int, default=4000, help="training scenes naming the pair, encoded once to latents")
    p.add_argument("--replay", type=int, default=4000,
                   help="seen-split training scenes mixed in (against forgetting; 0: only the pair's scenes)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0, help="the update is scaled by alpha / rank")
    p.add_argument("--targets", nargs="+", default=["cross"],
                   help=f"layers to adapt: a preset ({', '.join(TARGET_PRESETS)}) or layer-name endings "
                        "such as attn2.to_k")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--caption-dropout", type=float, default=0.0,
                   help="share of captions replaced by the empty prompt (0: the unconditional prediction is "
                        "left to the base model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this long")
    p.add_argument("--eval-captions", type=int, default=192,
                   help="captions naming the pair, judged before and after (0: no measurement)")
    p.add_argument("--eval-seen", type=int, default=192,
                   help="seen-split captions judged before and after (0: none; else at least 8)")
    p.add_argument("--eval-neighbours", type=int, default=96,
                   help="captions judged before and after for each of two seen pairs sharing a word with the "
                        "taught one (its shape in another colour, its colour on another shape; 0: none)")
    p.add_argument("--name", default="shapeworld_lora_green_circle")
    p.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    args = parse_args(p, argv, script=Path(__file__).name)
    color, shape = args.pair
    if color not in COLOR_NAMES or shape not in SHAPES:
        p.error(f"--pair: colours are {', '.join(COLOR_NAMES)}; shapes are {', '.join(SHAPES)}")
    if 0 < args.eval_seen < 8:
        p.error("--eval-seen must be 0 or at least 8 (evaluate_prompts measures distances between sets)")

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    pipe = load_shipped_pipeline()
    text = TextConditioner(pipe.tokenizer, pipe.text_encoder, mask_padding=pipe.mask_padding)
    start = time.time()
    data = concept_data(pipe.vae, color, shape, args.images, seed=TRAIN_SEED)
    if args.replay:
        seen = LatentCaptionData.from_shapeworld(pipe.vae, args.replay, seed=TRAIN_SEED, split="train")
        data = LatentCaptionData(torch.cat([data.latents, seen.latents]), data.captions + seen.captions)
    print(f"encoded {args.images} scenes naming a {color} {shape} (+ {args.replay} seen) to latents in "
          f"{time.time() - start:.0f} s", flush=True)

    before = measure(pipe, color, shape, args.eval_captions, args.eval_seen, args.eval_neighbours)
    if before:
        print(f"before: {before}", flush=True)

    unet = pipe.unet
    add_lora(unet, args.rank, args.alpha, targets=args.targets)
    count = count_lora_parameters(unet)
    print(count, flush=True)
    config = TrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                            ema_decay=None, prediction_type=pipe.prediction_type, seed=args.seed)
    start = time.time()
    result = train_diffusion_model(unet, data.batches(text, args.caption_dropout), pipe.schedule, config,
                                   max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    minutes = (time.time() - start) / 60
    unet.eval().requires_grad_(False)
    first, tail = result.losses[:50], result.losses[-50:]
    print(f"{result.steps} steps in {minutes:.1f} min ({result.images_per_second:.0f} img/s); mean loss of the "
          f"first/last {len(tail)} steps {sum(first) / len(first):.4f} / {sum(tail) / len(tail):.4f}", flush=True)

    after = measure(pipe, color, shape, args.eval_captions, args.eval_seen, args.eval_neighbours)
    if after:
        print(f"after: {after}", flush=True)

    targets = " ".join(args.targets)
    command = (f"python scripts/train_lora.py --pair {color} {shape} --images {args.images} --replay {args.replay} "
               f"--rank {args.rank} --alpha {args.alpha} --targets {targets} --steps {result.steps} "
               f"--batch-size {args.batch_size} --lr {args.lr} --warmup-steps {args.warmup_steps} "
               f"--caption-dropout {args.caption_dropout} --seed {args.seed} --threads {args.threads}")
    base = read_manifest(data_dir()).get(SHIPPED_T2I_UNET, {})
    folder = Path(args.folder or data_dir())
    weights = save_lora(folder / f"{args.name}.safetensors", unet, base_model=SHIPPED_T2I_UNET,
                        base_sha256=base.get("sha256"), extra={"pair": [color, shape]})
    config_json = {"lora": {"rank": args.rank, "alpha": args.alpha, "targets": args.targets, "pair": [color, shape],
                            "base_model": SHIPPED_T2I_UNET, "base_sha256": base.get("sha256"),
                            "pipeline_config": SHIPPED_CONFIG.name},
                   "training": {"steps": result.steps, "batch_size": args.batch_size, "lr": args.lr,
                                "warmup_steps": args.warmup_steps, "ema": None, "grad_clip": config.grad_clip,
                                "caption_dropout": args.caption_dropout, "seed": args.seed,
                                "data": f"{args.images} ShapeWorld scenes whose caption names a {color} {shape} "
                                        f"(held-out split, seeds from {TRAIN_SEED}) + {args.replay} seen-split "
                                        "scenes, latents of the shipped autoencoder"}}
    metrics = {"steps": result.steps, "train_minutes": round(minutes, 2), "threads": args.threads,
               "images_per_second": round(result.images_per_second, 1),
               "machine": "2 shared CPU cores, fp32",
               "trainable_parameters": count.lora, "model_parameters": count.base, "adapted_layers": count.layers,
               "trainable_share": round(count.fraction, 5),
               "loss_first_50_steps": round(sum(first) / len(first), 4),
               "loss_last_50_steps": round(sum(tail) / len(tail), 4),
               "loss_every_50_steps": window_means(result.losses, 50),
               "evaluation": {"sampler": SAMPLER, "steps": STEPS, "guidance_scale": GUIDANCE,
                              "before": before, "after": after}}
    record_checkpoint(weights, args.name, config=config_json, command=command, metrics=metrics)
    print(f"saved {weights}; reproduce with: {command}")


if __name__ == "__main__":
    main()
