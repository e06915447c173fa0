"""img2img (SDEdit) and inpainting in the course's pipeline (notebook 13_beyond_text_to_image).

Parity with diffusers: the tiny random public-format pipelines of tests/test_convert.py (built by its
``build_case``, read by ``course_lib.pipeline.convert``) make the same images as diffusers'
``StableDiffusionImg2ImgPipeline`` and ``StableDiffusionInpaintPipeline`` (the ordinary 4-channel
U-Net, which diffusers' inpainting runs by latent blending) from the same image, mask, prompt,
negative prompt, guidance scale, strength, sampler and seed.

Seeds: diffusers is given ``generator=[torch.Generator().manual_seed(SEED)]`` (a list: one generator
per image), and the course reproduces its generator calls in the same order: image i's generator
``torch.Generator().manual_seed(seed + i)`` draws the posterior sample of the autoencoder
(``retrieve_latents(..., sample_mode="sample")``), then the noise, then DDPM's step noise. The
inpainting comparison passes diffusers ``masked_image_latents`` (zeros; the 4-channel U-Net never
reads them) for DDPM only: otherwise diffusers encodes the masked image with the generators, one more
draw per image that the course does not make, and DDPM's step noise would differ; the deterministic
samplers are compared without it. The mask is a soft tensor; diffusers' ``mask_processor``
binarizes it at 0.5 (``do_binarize``) and ``prepare_mask_latents`` shrinks it to the latent size
with nearest-neighbour ``interpolate``, as the course does; ``padding_mask_crop=None``.

PLMS: diffusers' ``PNDMScheduler`` lists its timesteps as ``[901, 801, 801, 701, ...]`` and img2img
cuts that list at ``steps - int(steps * strength)``, so below strength 1 its U-Net sees timesteps
one grid step off the latents' noise level: the course refuses PLMS below strength 1 and is compared
at strength 1 only.

Observed max |difference| on the images in [0, 1] (10 steps, guidance 7.5): img2img 6e-6 to 1.1e-5,
inpainting 6e-6 to 1.1e-5, every sampler and strength (float32 rounding of random U-Nets that drive
the latents to magnitudes of tens). Asserted: ATOL = 5e-5.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import require

from course_lib.diffusion.samplers import sample, sampler_timesteps
from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.pipeline.text_to_image import GenerationSettings, img2img_steps, load_image

ROOT = Path(__file__).resolve().parent.parent
ATOL = 5e-5
STEPS = 10
GUIDANCE = 7.5
SEED = 11
PROMPT, STYLE = "A dog eats a carrot", "cinematic-default"


# ------------------------------------------------------------------------------------------------
# Parity with diffusers on tiny public-format pipelines
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (course pipeline, diffusers components, scheduler config) for SD-1-like (epsilon) and
    SD-2-like v-prediction folders, built by tests/test_convert.py's ``build_case``."""
    require("diffusers")
    require("transformers")
    from test_convert import build_case

    from course_lib.pipeline.convert import load_diffusers_pipeline

    root = tmp_path_factory.mktemp("img2img_folders")
    out = {}
    for name in ("sd1", "sd2_v"):
        folder, ref = build_case(name, root)
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        out[name] = (load_diffusers_pipeline(folder), ref.components, config)
    return out


def reference_scheduler(config: dict, sampler: str):
    """The diffusers scheduler that the course's ``sampler`` equals, from the folder's config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    cls, kwargs = {"ddim": (DDIMScheduler, {}), "ddpm": (DDPMScheduler, {}),
                   "plms": (PNDMScheduler, {"skip_prk_steps": True}),
                   "dpm-solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver",
                                                  "final_sigmas_type": "sigma_min"}),
                   "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"})}[sampler]
    return cls.from_config(config, **kwargs)


def make_image(size: int = 16, seed: int = 5) -> torch.Tensor:
    """A smooth random image (1, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").clamp(0, 1)


def make_mask(size: int = 16) -> torch.Tensor:
    """A soft mask (1, 1, size, size): a ramp from 0 to 1 across the width; >= 0.5 is the right half."""
    return torch.linspace(0, 1, size).expand(1, 1, size, size).clone()


def diffusers_edit(components: dict, config: dict, sampler: str, strength: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    from course_lib.diffusion.guidance import apply_style

    cls = StableDiffusionImg2ImgPipeline if mask is None else StableDiffusionInpaintPipeline
    pipe = cls(**{**components, "scheduler": reference_scheduler(config, sampler)})
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = apply_style(PROMPT, "", STYLE)
    kwargs = dict(prompt=prompt, negative_prompt=negative, image=make_image(), strength=strength,
                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="pt",
                  generator=[torch.Generator().manual_seed(SEED)])
    if mask is not None:
        kwargs.update(mask_image=mask, padding_mask_crop=None)
        if sampler == "ddpm":   # no generator draw for the masked image, which a 4-channel U-Net never reads
            kwargs["masked_image_latents"] = torch.zeros(1, 4, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**kwargs).images


def course_edit(pipe, sampler: str, strength: float, mask: torch.Tensor | None = None):
    return pipe(PROMPT, style=STYLE, sampler=sampler, steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
                strength=strength, init_image=make_image(), mask=mask, show_progress=False)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


IMG2IMG_CASES = [(name, sampler, strength) for name, sampler in
                 [("sd1", "ddim"), ("sd1", "dpm-solver++"), ("sd1", "dpm-solver"), ("sd1", "ddpm"),
                  ("sd2_v", "ddim"), ("sd2_v", "dpm-solver++")]
                 for strength in (0.5, 0.8)] + [("sd1", "plms", 1.0), ("sd1", "dpm-solver++", 1.0)]


@pytest.mark.parametrize("name, sampler, strength", IMG2IMG_CASES)
@pytest.mark.filterwarnings("ignore::FutureWarning")   # diffusers deprecates algorithm_type="dpmsolver"
def test_img2img_equals_diffusers(tiny, name, sampler, strength):
    pipe, components, config = tiny[name]
    ours = course_edit(pipe, sampler, strength)
    expected = diffusers_edit(components, config, sampler, strength)
    run = img2img_steps(STEPS, strength)
    assert ours.model_calls == run + (sampler == "plms")
    assert expected.shape == ours.images.shape == (1, 3, 16, 16) and expected.std() > 0.01
    diff = max_diff(ours.images, expected)
    print(f"{name} {sampler} strength {strength}: max |difference| {diff:.1e}")
    assert diff < ATOL, f"{name} {sampler} strength {strength}: max |difference| {diff:.2e}"


INPAINT_CASES = [("sd1", "ddim", 0.5), ("sd1", "dpm-solver++", 0.8), ("sd1", "dpm-solver++", 1.0),
                 ("sd1", "ddpm", 0.8), ("sd1", "ddpm", 1.0), ("sd1", "plms", 1.0), ("sd2_v", "ddim", 1.0)]


@pytest.mark.parametrize("name, sampler, strength", INPAINT_CASES)
def test_inpainting_equals_diffusers_with_a_4_channel_unet(tiny, name, sampler, strength):
    pipe, components, config = tiny[name]
    ours = course_edit(pipe, sampler, strength, mask=make_mask())
    expected = diffusers_edit(components, config, sampler, strength, mask=make_mask())
    diff = max_diff(ours.images, expected)
    print(f"{name} {sampler} strength {strength}: max |difference| {diff:.1e}")
    assert diff < ATOL, f"{name} {sampler} strength {strength}: max |difference| {diff:.2e}"


def test_start_step_runs_the_tail_of_the_grid(tiny):
    """``sample(start_step=k)`` evaluates the model at the grid's timesteps from k on."""
    pipe, _, _ = tiny["sd1"]
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    for sampler in ("ddim", "dpm-solver++", "ddpm"):
        calls.clear()
        grid = sampler_timesteps(sampler, pipe.schedule, STEPS)
        result = sample(model_fn, pipe.schedule, torch.randn(1, 4, 8, 8), sampler, STEPS, start_step=4)
        assert calls == grid[4:] and result.model_calls == STEPS - 4 and result.timesteps == grid[4:]
    assert sampler_timesteps("ddim", pipe.schedule, STEPS)[:2] == [901, 801]
    assert sampler_timesteps("dpm-solver++", pipe.schedule, STEPS)[:2] == [999, 899]
    with pytest.raises(ValueError, match="start_step must be an int from 0 to steps - 1 = 9"):
        sample(model_fn, pipe.schedule, torch.randn(1, 4, 8, 8), "ddim", STEPS, start_step=10)


@pytest.mark.filterwarnings("ignore")
def test_start_step_equals_diffusers_begin_index_for_the_dpm_solvers():
    """Singlestep (orders 2, 3) and multistep order 3 from every start step equal diffusers'
    schedulers with ``set_begin_index`` (a toy model; the histories restart at the first step)."""
    from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

    from course_lib.diffusion.schedules import make_schedule

    schedule = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                  algorithm_type="dpmsolver++")

    def model_fn(x, t):
        return 0.8 * torch.sin(1.3 * x + t.float()[:, None, None, None] / 300)

    x_start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for cls, method, order in [(DPMSolverSinglestepScheduler, "singlestep", 2),
                               (DPMSolverSinglestepScheduler, "singlestep", 3),
                               (DPMSolverMultistepScheduler, "multistep", 3)]:
        for steps in (9, 10):
            for start in range(steps):
                scheduler = cls(**config, solver_order=order)
                scheduler.set_timesteps(steps)
                scheduler.set_begin_index(start)
                x = x_start.clone()
                for t in scheduler.timesteps[start:]:
                    x = scheduler.step(model_fn(x, t.repeat(2)), t, x).prev_sample
                ours = sample(model_fn, schedule, x_start, "dpm-solver++", steps, order=order, method=method,
                              start_step=start).sample
                assert max_diff(ours, x) < 1e-4, (method, order, steps, start)


def test_diffusers_plms_img2img_starts_one_step_off(tiny):
    """Why the course refuses PLMS below strength 1: cut at ``steps - int(steps * strength)``,
    PNDMScheduler's list (which repeats its second timestep) starts one grid step early, and then the
    timesteps it is called with run one step behind the latents' noise level."""
    from diffusers import PNDMScheduler

    _, _, config = tiny["sd1"]
    scheduler = PNDMScheduler.from_config(config, skip_prk_steps=True)
    scheduler.set_timesteps(STEPS)
    assert scheduler.timesteps[:4].tolist() == [901, 801, 801, 701]
    cut = STEPS - img2img_steps(STEPS, 0.5)
    assert scheduler.timesteps[cut:].tolist() == [501, 401, 301, 201, 101, 1]     # 6 timesteps for 5 steps
    assert sampler_timesteps("ddim", tiny["sd1"][0].schedule, STEPS)[cut:] == [401, 301, 201, 101, 1]


# ------------------------------------------------------------------------------------------------
# The shipped ShapeWorld pipeline
# ------------------------------------------------------------------------------------------------

SHAPES = "a red circle above a blue square"


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_pipeline()


@pytest.fixture(scope="module")
def shapes(shipped) -> torch.Tensor:
    """A ShapeWorld image made by the model itself, (1, 3, 32, 32)."""
    return shipped(SHAPES, steps=20, seed=3, show_progress=False).images


def reconstruction(pipe, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """What img2img keeps at strength 0: the decoded posterior sample of image's generator (seed)."""
    return pipe.decode(pipe.encode(image, [torch.Generator().manual_seed(seed)]))


def test_strength_0_returns_the_autoencoders_reconstruction(shipped, shapes):
    out = shipped("a green triangle", init_image=shapes, strength=0, show_progress=False)
    assert out.model_calls == 0
    torch.testing.assert_close(out.images, reconstruction(shipped, shapes), atol=1e-6, rtol=0)
    mean_recon = shipped.decode(shipped.encode(shapes))        # the posterior mean: std is ~0.007 here
    assert (out.images - mean_recon).abs().max() < 0.05
    # the autoencoder's own loss on this image: max 0.37 at a few edge pixels, mean 0.007
    assert (out.images - shapes).abs().mean() < 0.02


def test_strength_1_img2img_is_text_to_image_from_the_noised_image_not_from_pure_noise(shipped, shapes):
    """img2img at strength 1 noises the image to the first timestep (999 for DPM-Solver++), where
    sqrt(alpha_bar) = 0.068 of the image latent remains, as diffusers does; so it is not plain generation
    from the same noise (measured: max |difference| 0.94, mean 0.016), but plain generation started
    from the noised image. Inpainting at strength 1 starts from pure noise (diffusers' is_strength_max):
    with a mask that repaints everything it is plain generation."""
    from course_lib.diffusion.forward import q_sample

    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(42))
    img2img = shipped(SHAPES, init_image=shapes, strength=1.0, latents=z, show_progress=False)
    plain = shipped(SHAPES, latents=z, show_progress=False)
    assert img2img.model_calls == plain.model_calls == GenerationSettings().steps
    assert (img2img.images - plain.images).abs().max() > 0.05
    t0 = sampler_timesteps("dpm-solver++", shipped.schedule, GenerationSettings().steps)[0]
    noised = q_sample(shipped.encode(shapes, [torch.Generator().manual_seed(0)]), t0, z, shipped.schedule)
    torch.testing.assert_close(img2img.images, shipped(SHAPES, latents=noised, show_progress=False).images,
                               atol=1e-6, rtol=0)
    everything = shipped(SHAPES, init_image=shapes, mask=torch.ones(1, 1, 32, 32), latents=z, show_progress=False)
    torch.testing.assert_close(everything.images, plain.images, atol=1e-6, rtol=0)


def test_img2img_keeps_more_of_the_input_at_lower_strength(shipped, shapes):
    """Measured mean |difference| to the input (20 steps): with the input's own prompt 0.006 (strength
    0.1) to 0.021 (1.0), the shapes kept; recoloured by the prompt "a green circle above a yellow
    square" 0.066 at 0.1 (barely changed), 0.15 from 0.2 on (recoloured: simple flat shapes follow a
    new prompt after a few steps)."""
    new, same = [], []
    for strength in (0.1, 0.5, 0.9):
        out = shipped("a green circle above a yellow square", init_image=shapes, strength=strength,
                      show_progress=False)
        assert out.model_calls == img2img_steps(20, strength)
        new.append((out.images - shapes).abs().mean().item())
        kept = shipped(SHAPES, init_image=shapes, strength=strength, show_progress=False)
        same.append((kept.images - shapes).abs().mean().item())
    assert new[0] < 0.1 < new[1] and new[0] < new[2], new
    assert max(same) < 0.04, same


@pytest.mark.parametrize("sampler", ["dpm-solver++", "ddim", "ddpm"])
def test_inpainting_keeps_the_outside_and_repaints_the_inside(shipped, shapes, sampler):
    """Outside the mask the final latents are the encoded image's exactly (the last blend); in pixels
    the decoder's receptive field (convolutions and the mid-block's attention) spreads the repainted
    latents a little. Measured (top half repainted, 20 steps) against the autoencoder's reconstruction:
    outside max 0.43 to 0.73 (at the mask's edge), mean 0.007 to 0.009; 4 or more pixels from the mask
    max 0.06 to 0.07, mean 0.0065; inside mean 0.11 to 0.12."""
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1                                                  # repaint the top half
    out = shipped("a green circle above a yellow square", init_image=shapes, mask=mask, sampler=sampler,
                  show_progress=False)
    image_latents = shipped.encode(shapes, [torch.Generator().manual_seed(0)])
    assert torch.equal(out.latents[..., 4:, :], image_latents[..., 4:, :])          # latent rows 4..7 kept
    diff = (out.images - reconstruction(shipped, shapes)).abs()                      # (1, 3, 32, 32)
    outside, far = diff[..., 16:, :], diff[..., 20:, :]
    assert outside.mean() < 0.02 and far.mean() < 0.01 and far.max() < 0.15
    assert diff[..., :16, :].mean() > 0.05


def test_an_empty_mask_gives_the_reconstruction_and_images_have_their_own_generators(shipped, shapes):
    keep_all = shipped(SHAPES, init_image=shapes, mask=torch.zeros(1, 1, 32, 32), show_progress=False)
    torch.testing.assert_close(keep_all.images, reconstruction(shipped, shapes), atol=1e-6, rtol=0)
    two = shipped([SHAPES, "two green squares"], init_image=shapes, strength=0.6, seed=4, sampler="ddpm",
                  show_progress=False)
    alone = shipped("two green squares", init_image=shapes, strength=0.6, seed=5, sampler="ddpm",
                    show_progress=False)
    torch.testing.assert_close(two.images[1], alone.images[0], atol=1e-5, rtol=0)   # image 1 remade alone


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def _bad_inputs(image: torch.Tensor) -> list:
    return [
        (dict(init_image=image, strength=1.5), ValueError, r"strength must be a number from 0 to 1"),
        (dict(init_image=image, strength=-0.1), ValueError, r"strength must be a number from 0 to 1"),
        (dict(strength=0.5), ValueError, r"strength applies to img2img and inpainting: pass init_image"),
        (dict(mask=torch.ones(1, 1, 32, 32)), ValueError, r"a mask needs the image it masks: pass init_image"),
        (dict(init_image=image, mask=torch.ones(1, 1, 16, 16)), ValueError,
         r"mask is 16x16 but the init image is 32x32"),
        (dict(init_image=image, mask=torch.ones(1, 3, 32, 32)), ValueError, r"keep one channel: m\[:, :1\]"),
        (dict(init_image=image, mask=torch.ones(32, 32)), ValueError, r"m\[None, None\]"),
        (dict(init_image=image, mask=torch.full((1, 1, 32, 32), 255.0)), ValueError, r"mask values must be in"),
        (dict(init_image=torch.rand(1, 3, 64, 64)), ValueError, r"is 64x64 but the model makes 32x32 images; resize"),
        (dict(init_image=image[:, :1]), ValueError, r"grey \(1 channel\).*expand\(-1, 3, -1, -1\)"),
        (dict(init_image=torch.cat([image, torch.ones(1, 1, 32, 32)], 1)), ValueError, r"RGBA.*x\[:, :3\]"),
        (dict(init_image=image * 2 - 1), ValueError, r"values must be in \[0, 1\].*\(x \+ 1\) / 2"),
        (dict(init_image=image * 255), ValueError, r"for 0..255 use x / 255"),
        (dict(init_image=(image * 255).to(torch.uint8)), TypeError, r"x.float\(\) / 255"),
        (dict(init_image=image[0]), ValueError, r"add the batch axis: x\[None\]"),
        (dict(init_image=image.numpy()), TypeError, r"load_image\(path\)"),
        (dict(init_image=image, strength=0.04), ValueError,
         r"strength=0.04 with steps=20 runs int\(20 \* 0.04\) = 0 steps.*strength >= 0.05.*strength=0"),
        (dict(init_image=image, strength=0.5, sampler="plms"), ValueError,
         r"plms runs img2img and inpainting only at strength 1.*ddim, ddpm, dpm-solver, dpm-solver\+\+"),
        (dict(init_image=torch.cat([image] * 3)), ValueError, r"init_image holds 3 images for 1 prompt"),
    ]


def test_bad_input_is_a_clear_error(shipped, shapes):
    for kwargs, error, match in _bad_inputs(shapes):
        with pytest.raises(error, match=match):
            shipped(SHAPES, show_progress=False, **kwargs)
    with pytest.raises(ValueError, match="strength must be a number from 0 to 1"):
        GenerationSettings(strength=True).validate()


def test_load_image_converts_and_checks_the_size(tmp_path, shapes):
    from PIL import Image

    from course_lib.generate import main  # noqa: F401  (the command line loads files with load_image)

    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(rgba)
    x = load_image(rgba, "RGB", 32)
    assert x.shape == (1, 3, 32, 32) and x[0, 0].eq(1).all() and x[0, 1:].eq(0).all()
    grey = tmp_path / "grey.png"
    Image.new("L", (32, 32), 128).save(grey)
    assert load_image(grey, "RGB", 32).shape == (1, 3, 32, 32) and load_image(grey, "L").shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"is 32x32 pixels but the model makes 64x64 images; resize"):
        load_image(grey, "RGB", 64)
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="is not an image PIL can read"):
        load_image(tmp_path / "text.png")


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_files(tmp_path_factory, shapes):
    from torchvision.utils import save_image

    folder = tmp_path_factory.mktemp("cli_images")
    save_image(shapes, folder / "in.png")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    save_image(mask, folder / "mask.png")
    save_image(torch.rand(1, 3, 16, 16), folder / "small.png")
    return folder


def _saved(path: Path) -> torch.Tensor:
    return load_image(path, "RGB", 32)


def test_command_line_img2img_and_inpainting(image_files, tmp_path, capsys):
    from course_lib.generate import main

    src = _saved(image_files / "in.png")
    out = tmp_path / "img2img.png"
    assert main(["a green circle above a blue square", "--init-image", str(image_files / "in.png"),
                 "--strength", "0.5", "--steps", "4", "--out", str(out)]) == 0
    assert "2 U-Net calls" in capsys.readouterr().out        # int(4 * 0.5) steps
    assert _saved(out).shape == (1, 3, 32, 32) and (_saved(out) - src).abs().mean() < 0.2

    out = tmp_path / "inpaint.png"
    assert main(["a green circle above a blue square", "--init-image", str(image_files / "in.png"),
                 "--mask", str(image_files / "mask.png"), "--steps", "4", "--out", str(out)]) == 0
    assert "4 U-Net calls" in capsys.readouterr().out        # strength 1.0 by default with a mask
    diff = (_saved(out) - src).abs()
    assert diff[..., 20:, :].mean() < 0.02 < diff[..., :16, :].mean()   # bottom kept, top repainted


@pytest.mark.parametrize("args, message", [
    (["--strength", "0.5"], "--strength needs --init-image PATH"),
    (["--mask", "{d}/mask.png"], "--mask needs --init-image PATH"),
    (["--init-image", "{d}/small.png"], "small.png' is 16x16 pixels but the model makes 32x32 images"),
    (["--init-image", "{d}/in.png", "--mask", "{d}/small.png"], "small.png' is 16x16 pixels"),
    (["--init-image", "{d}/missing.png"], "no image file"),
    (["--init-image", "{d}/in.png", "--strength", "2"], "strength must be a number from 0 to 1"),
    (["--init-image", "{d}/in.png", "--strength", "0.1", "--steps", "4"], "runs int(4 * 0.1) = 0 steps"),
])
def test_command_line_edit_errors(image_files, capsys, args, message):
    from course_lib.generate import main

    assert main([SHAPES, "--steps", "4", *[a.format(d=image_files) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_command_line_help_names_the_edit_options():
    done = subprocess.run([sys.executable, "-m", "course_lib.generate", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={"COLUMNS": "100", "OMP_NUM_THREADS": "1", "PATH": ""}, timeout=300)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in ("--init-image PATH", "(default: none, text to image)", "--strength STRENGTH",
                     "(default: 0.8, or 1.0 with --mask, as diffusers)", "--mask PATH",
                     "(default: none, the whole image)"):
        assert expected in text, f"{expected!r} not in --help"
