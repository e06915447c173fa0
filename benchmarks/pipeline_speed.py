"""Speed of the course's text-to-image pipeline against diffusers' on identical weights.

    python benchmarks/pipeline_speed.py                    # writes benchmarks/results/pipeline_speed.json
    python benchmarks/pipeline_speed.py --folder PATH      # a real diffusers folder (e.g. from download_pipeline)
    python benchmarks/pipeline_speed.py --repeats 1 --steps 5 --out /tmp/speed.json   # a quick look

Both pipelines run the same weights: a random Stable-Diffusion-shaped model built with diffusers
and saved with ``save_pretrained`` (by default a mid-size one: latents 4x32x32 -> 256x256 images,
U-Net ``block_out_channels=(64, 128, 256, 256)`` with attention at the first three levels and
64-channel heads, a 4-layer text encoder of width 256), loaded by diffusers'
``StableDiffusionPipeline.from_pretrained`` and by the course's ``load_diffusers_pipeline``. Each
generates one image for one prompt with classifier-free guidance (so every U-Net call is a batch of
2), the same starting latents and the same sampler (DPM-Solver++(2M), 20 steps by default).

Rows: the whole pipeline (prompt to image) in float32, one U-Net call alone in float32 and in
bfloat16, and with ``--bf16-pipeline`` the whole pipeline in bfloat16. That last row is opt-in
because on a CPU without AVX-512 bfloat16 instructions PyTorch runs bfloat16 convolutions with its
slow reference kernel (``aten::_slow_conv2d_forward``, ~30x slower than float32 here), and
diffusers' bfloat16 decoder then takes minutes. The bfloat16 rows are not quite the same work:
``diffusers``' ``pipe.to(torch.bfloat16)`` runs the text encoder, the U-Net *and* the decoder in
bfloat16 (and its latents are bfloat16 between steps), while the course's ``use_bf16=True`` runs
only the U-Net in bfloat16 and keeps the text encoder, the sampler's arithmetic and the decoder in
float32, as SD's ``v2-inference-bf16.yaml`` does. The U-Net rows compare like with like. The
median of ``--repeats`` timed runs after one warm-up run is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.core.cli import HelpFormatter  # noqa: E402
from course_lib.diffusion.guidance import apply_style  # noqa: E402
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe  # noqa: E402
from course_lib.pipeline.convert import load_diffusers_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT, STYLE = "The hare is juggling balls", "sai-fantasy art"
GUIDANCE = 7.5


def build_folder(folder: Path, size: int) -> Path:
    """A random SD 2-shaped pipeline (gelu text encoder, linear projections, 64-channel heads), saved."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    pairs = [(PROMPT, STYLE), ("A dog eats a carrot", "cinematic-default")]
    texts = [t for prompt, style in pairs for t in apply_style(prompt, "", style)]
    vocab, merges = train_bpe(texts, num_merges=1000, min_frequency=1)
    CLIPStyleTokenizer(vocab, merges, pad_token="!").save(folder / "tokenizer_files")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_files"))
    torch.manual_seed(0)
    chans = (64, 128, 256, 256)
    unet = UNet2DConditionModel(
        sample_size=size, block_out_channels=chans, layers_per_block=2, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=[c // 64 for c in chans], cross_attention_dim=256, use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              skip_prk_steps=True, set_alpha_to_one=False)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder / "sd")
    path = folder / "sd" / "scheduler" / "scheduler_config.json"      # read like the public SD configs,
    config = json.loads(path.read_text())                              # which predate timestep_spacing
    config.pop("timestep_spacing")
    path.write_text(json.dumps(config, indent=2))
    return folder / "sd"


#: diffusers' scheduler class and settings that make it the course's sampler (the public SD configs,
#: read as the course reads them): what both pipelines must share for the timings to compare.
DIFFUSERS_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False,
                               "set_alpha_to_one": False}),
    "plms": ("PNDMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "skip_prk_steps": True,
                               "set_alpha_to_one": False}),
    "dpm-solver": ("DPMSolverMultistepScheduler", {"timestep_spacing": "linspace", "algorithm_type": "dpmsolver",
                                                   "final_sigmas_type": "sigma_min"}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"timestep_spacing": "linspace",
                                                     "algorithm_type": "dpmsolver++"}),
}


def diffusers_pipeline(folder: str | Path, sampler: str, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu"):
    """diffusers' ``StableDiffusionPipeline`` for ``folder`` with the scheduler matching the course's ``sampler``,
    in ``dtype`` on ``device``, without progress bars."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    name, settings = DIFFUSERS_SCHEDULERS[sampler]
    ref = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    ref.scheduler = getattr(diffusers, name).from_config(ref.scheduler.config, **settings)
    ref.set_progress_bar_config(disable=True)
    return ref.to(device, dtype)


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls after one warm-up call, and all of them."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--folder", help="a diffusers Stable Diffusion folder (default: build a random mid-size one)")
    p.add_argument("--latent-size", type=int, default=32, help="latent side of the built model (images are 8x)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpm-solver++", choices=["ddim", "plms", "dpm-solver", "dpm-solver++"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows")
    p.add_argument("--bf16-pipeline", action="store_true",
                   help="also time the whole pipeline in bfloat16 (minutes on CPUs without AVX-512 bf16)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_speed.json"))
    args = p.parse_args()

    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    folder = Path(args.folder) if args.folder else build_folder(Path(tempfile.mkdtemp(prefix="pipeline_speed_")),
                                                                 args.latent_size)
    prompt, negative = apply_style(PROMPT, "", STYLE)

    def diffusers_pipe(dtype):
        return diffusers_pipeline(folder, args.sampler, dtype)

    course = {False: load_diffusers_pipeline(folder)}
    reference = {torch.float32: diffusers_pipe(torch.float32)}
    if not args.no_bf16:
        course[True] = load_diffusers_pipeline(folder, use_bf16=True)
        reference[torch.bfloat16] = diffusers_pipe(torch.bfloat16)
    print(f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}", flush=True)
    latents = course[False].initial_latents([0])
    c, h, w = course[False].latent_shape
    image_side = h * 2 ** (len(course[False].vae.config.block_out_channels) - 1)
    n_params = sum(q.numel() for q in course[False].unet.parameters())

    def run_course(use_bf16):
        return lambda: course[use_bf16](PROMPT, style=STYLE, sampler=args.sampler, steps=args.steps,
                                        guidance_scale=GUIDANCE, latents=latents, show_progress=False)

    def run_diffusers(dtype):
        return lambda: reference[dtype](prompt=prompt, negative_prompt=negative, num_inference_steps=args.steps,
                                        guidance_scale=GUIDANCE, latents=latents.to(dtype), output_type="pt")

    ctx = torch.randn(2, 77, course[False].unet.config.cross_attention_dim)
    x, t = torch.randn(2, c, h, w), torch.tensor([500, 500])

    def unet_course(use_bf16):
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        unet = course[use_bf16].unet
        return lambda: unet(x.to(dtype), t, ctx.to(dtype))

    def unet_diffusers(dtype):
        unet = reference[dtype].unet
        return lambda: unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype), return_dict=False)

    rows = []
    # (what, course, diffusers, repeats): bfloat16 is slow on many CPUs, so it is timed once
    cases = [("pipeline, float32", run_course(False), run_diffusers(torch.float32), args.repeats),
             ("U-Net call (batch 2), float32", unet_course(False), unet_diffusers(torch.float32), args.repeats)]
    if not args.no_bf16:
        cases.append(("U-Net call (batch 2), bfloat16", unet_course(True), unet_diffusers(torch.bfloat16), 1))
        if args.bf16_pipeline:
            cases.append(("pipeline, bfloat16", run_course(True), run_diffusers(torch.bfloat16), 1))
    print(f"{args.sampler}, {args.steps} steps, guidance {GUIDANCE}, latents {c}x{h}x{w} -> {image_side}x{image_side}, "
          f"U-Net {n_params / 1e6:.1f}M parameters, {torch.get_num_threads()} torch thread(s)\n", flush=True)
    print(f"{'what':32s} {'course s':>9s} {'diffusers s':>11s} {'course/diffusers':>16s}", flush=True)
    with torch.no_grad():
        for what, ours, theirs, repeats in cases:
            ours_s, ours_all = timed(ours, repeats)
            theirs_s, theirs_all = timed(theirs, repeats)
            rows.append({"what": what, "course_s": round(ours_s, 4), "diffusers_s": round(theirs_s, 4),
                         "ratio": round(ours_s / theirs_s, 3), "course_runs": [round(v, 4) for v in ours_all],
                         "diffusers_runs": [round(v, 4) for v in theirs_all]})
            print(f"{what:32s} {ours_s:9.3f} {theirs_s:11.3f} {ours_s / theirs_s:16.2f}", flush=True)

    result = {"command": ("python benchmarks/pipeline_speed.py " + " ".join(sys.argv[1:])).strip(),
              "folder": str(args.folder) if args.folder else f"random SD 2-shaped model, latent {args.latent_size}",
              "sampler": args.sampler, "steps": args.steps, "guidance_scale": GUIDANCE,
              "latent_shape": [c, h, w], "image_side": image_side, "unet_parameters": n_params,
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "diffusers": diffusers.__version__,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                         + ", 2 CPU cores shared with other jobs",
              "bf16_note": "diffusers runs text encoder, U-Net and decoder in bfloat16; the course only the U-Net",
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
