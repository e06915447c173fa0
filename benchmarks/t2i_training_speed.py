"""Where a training step of the text-to-image U-Net spends its time, and images/s before and after.

    python benchmarks/t2i_training_speed.py            # writes benchmarks/results/t2i_training_speed.json
    python benchmarks/t2i_training_speed.py --steps 10 --out /tmp/s.json   # a quick look

"Before" is the recipe the first shipped model was trained with: every caption padded to SD's 77
tokens and the U-Net's cross-attention reading all 77 positions. "After" is the current recipe:
the U-Net reads only the caption's own tokens (padding masked; the batch is cut to its longest
caption). Both run the real training loop (``train_diffusion_model``) on the same latents, the
same U-Net size and batch, at 1 and 2 torch threads, in the same process, so the ratio holds on
whatever machine runs it. The one-off costs (rendering the training images, encoding them to
latents, encoding the distinct captions) are timed too: they are paid once per run, not per step,
because the autoencoder and the text encoder are frozen.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from course_lib.core.cli import HelpFormatter
from course_lib.diffusion.schedules import make_schedule
from course_lib.models.unet import UNet
from course_lib.train.autoencoder import encode_latents, load_shipped_autoencoder
from course_lib.train.clip import load_shipped_clip
from course_lib.train.diffusion import TrainingConfig, train_diffusion_model
from course_lib.train.text_to_image import TRAIN_SEED, LatentCaptionData, TextConditioner, t2i_unet_config
from course_lib.worlds.shapeworld import ShapeWorld

ROOT = Path(__file__).resolve().parent.parent


def time_one_off_costs(n: int) -> dict[str, float]:
    """Seconds to render ``n`` training images, encode them to latents, and encode their distinct captions."""
    tokenizer, clip = load_shipped_clip()
    vae = load_shipped_autoencoder()
    start = time.perf_counter()
    batch = ShapeWorld().sample(n, seed=TRAIN_SEED, split="train")
    render = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        encode_latents(vae, batch.tensors())
    latents = time.perf_counter() - start
    distinct = sorted(set(batch.captions))
    start = time.perf_counter()
    TextConditioner(tokenizer, clip.text_encoder)(distinct)
    text = time.perf_counter() - start
    return {"images": n, "render_s": round(render, 2), "encode_latents_s": round(latents, 2),
            "distinct_captions": len(distinct), "encode_captions_s": round(text, 2)}


def images_per_second(data: LatentCaptionData, text: TextConditioner, steps: int, batch_size: int,
                      threads: int) -> float:
    """Images/s of the real training loop (after 3 warm-up steps) for the shipped U-Net size."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = UNet(t2i_unet_config(context_dim=text.context_dim))
    schedule = make_schedule("scaled_linear")
    batches = data.batches(text, caption_dropout=0.1)
    train_diffusion_model(unet, batches, schedule, TrainingConfig(steps=3, batch_size=batch_size),
                          show_progress=False)
    result = train_diffusion_model(unet, batches, schedule, TrainingConfig(steps=steps, batch_size=batch_size),
                                   show_progress=False)
    return result.images_per_second


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per setting")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=5000, help="training images to encode for the timing")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "t2i_training_speed.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(max(args.threads))
    one_off = time_one_off_costs(args.images)
    tokenizer, clip = load_shipped_clip()
    data = LatentCaptionData.from_shapeworld(load_shipped_autoencoder(), args.images)
    rows = []
    print(f"{'recipe':42s} {'threads':>7s} {'img/s':>7s}")
    for mask, label in ((False, "before: 77 positions (SD's padding)"), (True, "after: the caption's tokens only")):
        text = TextConditioner(tokenizer, clip.text_encoder, mask_padding=mask)
        text(sorted(set(data.captions)) + [""])          # fill the cache: a real run pays this once
        for threads in args.threads:
            ips = images_per_second(data, text, args.steps, args.batch_size, threads)
            rows.append({"mask_padding": mask, "threads": threads, "images_per_second": round(ips, 1)})
            print(f"{label:42s} {threads:7d} {ips:7.0f}", flush=True)
    before = next(r for r in rows if not r["mask_padding"] and r["threads"] == min(args.threads))
    after = next(r for r in rows if r["mask_padding"] and r["threads"] == max(args.threads))
    speedup = after["images_per_second"] / before["images_per_second"]
    print(f"\nthe first shipped run's setting (77 positions, {before['threads']} thread) -> the current one "
          f"(masked, {after['threads']} threads): {speedup:.2f}x")
    print(f"one-off, {one_off['images']} images: render {one_off['render_s']} s, encode to latents "
          f"{one_off['encode_latents_s']} s; {one_off['distinct_captions']} distinct captions encoded in "
          f"{one_off['encode_captions_s']} s")
    result = {"command": "python benchmarks/t2i_training_speed.py " + " ".join(argv if argv is not None
                                                                              else sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads max, "
                         f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
              "batch_size": args.batch_size, "steps": args.steps, "rows": rows, "speedup": round(speedup, 2),
              "one_off": one_off}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
