# %% [markdown]
# # 08 · The latent autoencoder: why Stable Diffusion diffuses in a small space
#
# Stable Diffusion does not denoise pixels. A **KL autoencoder** first squeezes each 512x512x3
# image into a 64x64x4 **latent**, 48 times fewer numbers; the U-Net and the sampler work only
# there, and the autoencoder's decoder turns the final latent into pixels once, at the end
# (Rombach et al. 2022, *High-Resolution Image Synthesis with Latent Diffusion Models*). This
# notebook builds that autoencoder, trains it on ShapeWorld (32x32x3 -> 8x8x4), and measures what
# the small space costs and what it saves.
#
# **After this notebook you will be able to:**
# - say why latent diffusion is cheaper, and measure the cost of one U-Net step in pixel space and
#   in latent space;
# - build the autoencoder's residual block and its Gaussian posterior (sampling and KL) by hand, and
#   show that `course_lib.models.vae` and diffusers' `AutoencoderKL` compute the same numbers on the same weights;
# - train a KL autoencoder and judge its reconstructions with PSNR, a Frechet distance (with its
#   floor) and prompt adherence, and show what detail it loses;
# - compute the latent scale factor the way SD computed 0.18215, and explain what the KL weight does
#   to the latents;
# - correct a popular claim: SD's autoencoder does not simply "preserve detail", and the only
#   discriminator in SD is the one that helped train this autoencoder.

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from course_lib.core.plotting import image_grid, plot_curves, show_images
from course_lib.core.utils import count_parameters, get_device, seed_everything
from course_lib.worlds.shapeworld import ShapeWorld

seed_everything(0)
device = get_device()
world = ShapeWorld()
print("torch", torch.__version__, "| device:", device)

# %% [markdown]
# ## 1. Why diffuse in a latent space?
#
# A diffusion model calls its U-Net 20 to 50 times per image, and every call processes the whole
# image. The cost of a call grows with the number of positions it sees: convolutions linearly,
# self-attention quadratically. So Rombach et al. split the work in two:
#
# 1. an **autoencoder**, trained once, maps an image to a latent that is 8x smaller per side
#    (SD: 512x512x3 -> 64x64x4) and back;
# 2. the **diffusion model** learns and samples only latents.
#
# The autoencoder removes the detail that is imperceptible or cheap to redo (the paper calls
# this the split into *perceptual* and *semantic* compression) and leaves the diffusion model the
# part that matters: what is where. Here are the sizes.

# %%
# NBVAL_CHECK_OUTPUT
def numbers(c, h, w):
    return c * h * w


for name, image, latent in [("Stable Diffusion 1.x/2.x", (3, 512, 512), (4, 64, 64)),
                            ("SD 2.x at 768x768", (3, 768, 768), (4, 96, 96)),
                            ("this course (ShapeWorld)", (3, 32, 32), (4, 8, 8))]:
    print(f"{name:26s} {numbers(*image):>9,} pixel values -> {numbers(*latent):>7,} latent values: "
          f"{numbers(*image) / numbers(*latent):.0f}x fewer")

# %% [markdown]
# Our world is tiny, so our autoencoder shrinks 4x per side (an 8x8 latent is as small as a 32x32
# image sensibly goes), and the compression is 12x rather than 48x. What a smaller space saves per
# step we can count exactly. Take two U-Nets from notebook 03 with the same widths and (almost) the
# same parameters, one reading 3 pixel channels at 32x32, the other 4 latent channels at 8x8; count
# the floating-point operations of one call with torch's `FlopCounterMode`, and add the decoder, which
# latent diffusion runs once per image, not once per step.

# %%
from course_lib.models.unet import UNet, UNetConfig
from course_lib.models.vae import AutoencoderKL
from course_lib.train.autoencoder import SHIPPED_VAE_CONFIG

unet_pixel = UNet(UNetConfig(in_channels=3, out_channels=3, sample_size=32, block_out_channels=(32, 64, 64))).eval()
unet_latent = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=8, block_out_channels=(32, 64, 64))).eval()
vae_shape = AutoencoderKL(SHIPPED_VAE_CONFIG).eval()  # weights do not matter for counting


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


x_pixel, z_latent = torch.randn(1, 3, 32, 32), torch.randn(1, 4, 8, 8)
cost = {"pixel U-Net step (3x32x32)": flops(lambda: unet_pixel(x_pixel, 500)),
        "latent U-Net step (4x8x8)": flops(lambda: unet_latent(z_latent, 500)),
        "decoder, once per image": flops(lambda: vae_shape.decode(z_latent)),
        "encoder (training only)": flops(lambda: vae_shape.encode(x_pixel))}

# %%
# NBVAL_CHECK_OUTPUT
print(f"parameters: pixel U-Net {count_parameters(unet_pixel):,}, latent U-Net {count_parameters(unet_latent):,}")
for name, f in cost.items():
    print(f"{name:28s} {f / 1e6:8.1f} MFLOPs per image")
steps = 20
pixel_total = steps * cost["pixel U-Net step (3x32x32)"]
latent_total = steps * cost["latent U-Net step (4x8x8)"] + cost["decoder, once per image"]
print(f"one step: latent is {cost['pixel U-Net step (3x32x32)'] / cost['latent U-Net step (4x8x8)']:.1f}x cheaper")
print(f"a {steps}-step sample with its decode: latent is {pixel_total / latent_total:.1f}x cheaper")

# %% [markdown]
# Counting operations is exact; the clock is what we pay. One call on a batch of 16, timed here
# (timings vary from run to run, so this cell's output is not checked):

# %%
def time_call(fn, repeats=2):
    with torch.no_grad():
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
    return (time.perf_counter() - start) / repeats


xb, zb = torch.randn(16, 3, 32, 32), torch.randn(16, 4, 8, 8)
t_pixel, t_latent = time_call(lambda: unet_pixel(xb, 500)), time_call(lambda: unet_latent(zb, 500))
print(f"pixel U-Net: {t_pixel * 1000:.0f} ms per step, latent U-Net: {t_latent * 1000:.0f} ms per step "
      f"({t_pixel / t_latent:.1f}x) for 16 images on {torch.get_num_threads()} thread(s)")

# %% [markdown]
# The latent step is about 16x cheaper in operations (a 32x32 map has 16 times the positions of an
# 8x8 one), and in wall time somewhat less, because small tensors use a CPU less efficiently. At SD's
# size the same arithmetic gives 64x per step for convolutions (512^2 vs 64^2 positions) and far more
# for self-attention; that is what made training on LAION and sampling on one consumer GPU possible.
#
# ## 2. The autoencoder, built in plain sight
#
# SD's autoencoder (`AutoencoderKL`, config `kl-f8`) has a familiar shape:
#
# * **encoder**: a 3x3 conv, then one level per entry of `block_out_channels`, each of residual
#   blocks (notebook 02's block without the time embedding) and a stride-2 downsample; a middle block
#   of residual block, **self-attention over all positions**, residual block; GroupNorm, SiLU, and a
#   conv to `2 * latent_channels` maps: the **mean and log-variance** of a Gaussian per latent number;
# * **quant_conv** (1x1) on those moments, and **post_quant_conv** (1x1) on the latent before decoding:
#   names left from the VQ autoencoders of the same paper, where a quantizer sat between them;
# * **decoder**: the mirror image, nearest-neighbour upsampling and a conv instead of downsampling.
#
# SD's own: `block_out_channels=(128, 256, 512, 512)`, 2 residual blocks per level, 84M parameters.
# Ours: `(16, 32, 64)`, 1 block per level, under 0.7M. Every tensor it passes through:

# %%
vae_demo = AutoencoderKL(SHIPPED_VAE_CONFIG).eval()
shapes = []
hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.append((name, tuple(o.shape))))
         for name, m in vae_demo.named_children() if name != "encoder" and name != "decoder"]
hooks += [m.register_forward_hook(lambda m, i, o, name=f"encoder.{name}": shapes.append((name, tuple(o.shape))))
          for name, m in vae_demo.encoder.named_children() if name != "down_blocks"]
hooks += [m.register_forward_hook(lambda m, i, o, name=f"encoder.down_blocks.{k}": shapes.append((name, tuple(o.shape))))
          for k, m in enumerate(vae_demo.encoder.down_blocks)]
with torch.no_grad():
    vae_demo.encode(torch.zeros(1, 3, 32, 32))
for h in hooks:
    h.remove()
order = ["encoder.conv_in", "encoder.down_blocks.0", "encoder.down_blocks.1", "encoder.down_blocks.2",
         "encoder.mid_block", "encoder.conv_out", "quant_conv"]
for name in order:
    print(f"{name:24s} -> {dict(shapes)[name]}")
print(f"parameters: encoder {count_parameters(vae_demo.encoder):,}, decoder {count_parameters(vae_demo.decoder):,}")

# %% [markdown]
# ### 2.1 The residual block, by hand
# Two rounds of GroupNorm, SiLU and a 3x3 convolution, added to the input (through a 1x1 conv when
# the channel count changes). The autoencoder's GroupNorm uses `eps=1e-6` (the U-Net's uses 1e-5).
# Written with plain functions and the weights of `course_lib`'s block:

# %%
def resnet_block(x, block):
    """SD's autoencoder residual block, from the weights of a course_lib ResnetBlock2D."""
    h = F.group_norm(x, block.norm1.num_groups, block.norm1.weight, block.norm1.bias, eps=1e-6)
    h = F.conv2d(F.silu(h), block.conv1.weight, block.conv1.bias, padding=1)
    h = F.group_norm(h, block.norm2.num_groups, block.norm2.weight, block.norm2.bias, eps=1e-6)
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if block.conv_shortcut is None else F.conv2d(x, block.conv_shortcut.weight, block.conv_shortcut.bias)
    return skip + h


# %% [markdown]
# ### 2.2 The posterior, by hand
# The encoder does not output a latent; it outputs a distribution over latents. `quant_conv`'s
# 2C maps are split into a mean and a log-variance per latent number (the log-variance clamped to
# [-30, 20], as in SD). A latent is drawn with the reparameterisation trick, `mean + std * noise`,
# so gradients flow through it; the KL divergence from the standard normal prior has a closed form:
#
# $$\mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, 1)\big) = \tfrac12 \textstyle\sum \left(\mu^2 + \sigma^2 - 1 - \log\sigma^2\right)$$

# %%
def posterior_sample_and_kl(moments, noise):
    """moments (B, 2C, h, w) -> a latent sample (B, C, h, w) and the KL per image (B,)."""
    mean, logvar = moments.chunk(2, dim=1)            # (B, 2C, h, w) -> 2 x (B, C, h, w)
    logvar = logvar.clamp(-30.0, 20.0)
    std = torch.exp(0.5 * logvar)
    z = mean + std * noise
    kl = 0.5 * (mean**2 + std**2 - 1.0 - logvar).sum(dim=(1, 2, 3))
    return z, kl


# %% [markdown]
# Both pieces against `course_lib.models.vae` on the same weights and the same noise (the shipped
# autoencoder's weights, loaded in section 4; here a freshly initialised one, with its
# parameters randomised so every weight matters):

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.vae import DiagonalGaussian

torch.manual_seed(0)
with torch.no_grad():
    for p in vae_demo.parameters():
        p.copy_(torch.randn_like(p) * 0.2)
    x = world.sample(4, seed=1).tensors()
    block = vae_demo.encoder.down_blocks[1].resnets[0]         # 16 -> 32 channels: has a 1x1 shortcut
    h = vae_demo.encoder.down_blocks[0](vae_demo.encoder.conv_in(x))
    print("residual block, max |hand - course_lib| < 1e-6:", bool((resnet_block(h, block) - block(h)).abs().max() < 1e-6))

    moments = vae_demo.quant_conv(vae_demo.encoder(x))
    noise = torch.randn(moments[:, :4].shape, generator=torch.Generator().manual_seed(7))
    z_hand, kl_hand = posterior_sample_and_kl(moments, noise)
    posterior = DiagonalGaussian(moments)
    z_lib = posterior.sample(torch.Generator().manual_seed(7))
    print("posterior sample, max |hand - course_lib| < 1e-6:", bool((z_hand - z_lib).abs().max() < 1e-6))
    print("KL per image, max relative difference < 1e-5:",
          bool(((kl_hand - posterior.kl()) / posterior.kl()).abs().max() < 1e-5))

# %% [markdown]
# ### 2.3 The same numbers as diffusers
# `course_lib.models.vae.AutoencoderKL` uses the parameter names of diffusers' `AutoencoderKL`, so one
# `load_state_dict` moves weights between them, and the public SD autoencoder loads into ours
# (notebook 11). Here diffusers' model is built with our sizes and given these same random weights:

# %%
# NBVAL_CHECK_OUTPUT
try:
    import diffusers
except ImportError:
    diffusers = None
    print("diffusers is not installed (pip install diffusers) - skipping the comparison")
if diffusers is not None:
    n_levels = len(SHIPPED_VAE_CONFIG.block_out_channels)
    reference = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=SHIPPED_VAE_CONFIG.block_out_channels, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels).eval()
    reference.load_state_dict(vae_demo.state_dict(), strict=True)
    with torch.no_grad():
        theirs = reference(x, sample_posterior=False).sample
        ours = vae_demo(x).sample
        theirs_mean = reference.encode(x).latent_dist.mean
    print("same parameter names:", list(reference.state_dict()) == list(vae_demo.state_dict()))
    print("latent means, max |diffusers - ours| < 1e-5:",
          bool((theirs_mean - vae_demo.encode(x).mean).abs().max() < 1e-5))
    print("reconstructions, max |diffusers - ours| < 1e-5:", bool((theirs - ours).abs().max() < 1e-5))

# %% [markdown]
# ## 3. Training it, and what SD really trained with
#
# The loss is a reconstruction error plus a KL term that pulls each posterior towards N(0, 1):
# `vae_loss(x, recon, posterior, kl_weight, kind)` in `course_lib.models.vae`, summed over pixels and
# latent numbers, averaged over the batch. SD's weight is **1e-6**: far too small to make the
# latents a standard normal; it only keeps them from drifting to huge values.
#
# **What SD's autoencoder was really trained with.** Its loss (`LPIPSWithDiscriminator` in the
# `ldm` code) is L1 plus a **perceptual loss** (LPIPS, distances between VGG features) plus a
# **patch-GAN discriminator** that scores overlapping patches as real or reconstructed (the recipe
# of Esser et al.'s VQGAN; in SD's `kl-f8` config `kl_weight: 1e-6`, `disc_weight: 0.5`,
# `disc_start: 50001`, so the discriminator joins after 50k steps). This is the only discriminator anywhere in
# Stable Diffusion: it exists while the autoencoder trains and is thrown away; sampling never
# sees it. So "SD is a GAN with a generator and a discriminator" is wrong, and "a discriminator is
# involved" is right only for the autoencoder's training.
#
# The course leaves LPIPS and the GAN out (no pretrained VGG offline, and minutes on two cores),
# and uses the squared error (`kind="mse"`; `vae_loss` also offers SD's L1). A short run shows the
# loss falling:

# %%
from course_lib.train.autoencoder import AutoencoderTrainingConfig, train_autoencoder

seed_everything(0)
vae_brief = AutoencoderKL(SHIPPED_VAE_CONFIG)
brief = train_autoencoder(vae_brief, AutoencoderTrainingConfig(steps=100, batch_size=16, chunk_size=1024,
                                                               loss_kind="mse", warmup_steps=20))
print(f"100 steps of 16 images in {brief.seconds:.0f} s ({brief.images_per_second:.0f} images/s); "
      f"squared error per image {brief.reconstruction[0]:.0f} -> {np.mean(brief.reconstruction[-10:]):.0f}")

# %% [markdown]
# The shipped autoencoder was trained by `scripts/train_autoencoder.py` with the same function and
# the same loss, for much longer; its curve is stored with its weights:

# %%
from course_lib.train.autoencoder import load_shipped_autoencoder, shipped_autoencoder_metrics

shipped = shipped_autoencoder_metrics()
every = shipped["loss_curve_every"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
plot_curves({"this notebook": brief.reconstruction}, ax=axes[0], logy=True, ylabel="squared error per image",
            title="100 steps here")
axes[1].plot(np.arange(len(shipped["reconstruction_curve"])) * every, shipped["reconstruction_curve"])
axes[1].set_yscale("log")
axes[1].set(xlabel="step", ylabel="squared error per image",
            title=f"the shipped run: {shipped['training']['steps']} steps, {shipped['train_minutes']:.0f} min")
axes[1].grid(alpha=0.3)
plt.tight_layout()
plt.show()
print("made by:", shipped["command"])

# %% [markdown]
# The shipped run's error fell by about three orders of magnitude over its 2,000 steps, the short
# run's by about one. The pictures show the difference: after 100 steps the reconstructions are
# blurred grey blobs in the right places (where comes before what colour); the shipped
# autoencoder's are hard to tell from the originals.

# %%
vae = load_shipped_autoencoder()
batch = world.sample(12, seed=2024)
x = batch.tensors()
from course_lib.train.autoencoder import reconstruct

recon_brief, recon = reconstruct(vae_brief, x), reconstruct(vae, x)
show_images(torch.cat([x, recon_brief, recon]), nrow=12,
            title="originals / after 100 steps here / the shipped autoencoder")
plt.show()

# %% [markdown]
# ## 4. How good are the reconstructions?
#
# Three judges, on 1,000 fresh images the autoencoder never saw:
#
# * **PSNR** (peak signal-to-noise ratio): `10 log10(range^2 / MSE)`, in dB, per image, averaged.
#   30 dB means the typical pixel is off by about 3% of its range.
# * **Frechet distance** of the reconstructions' features (the attribute network's, from notebook
#   00) from 2,000 other real images, beside its **floor**: the same distance for the originals.
#   A perfect autoencoder scores the floor.
# * **Prompt adherence**: do the reconstructions still obey the originals' captions? Scored like
#   generated images, next to the score of the originals themselves.
#
# Also on images with the four **held-out** colour-shape pairs, which the autoencoder never saw
# either (it was trained on the training split, like every model in the course).

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.train.autoencoder import evaluate_reconstructions

print(f"{'split':8s} {'PSNR dB':>8s} {'Frechet':>8s} {'floor':>6s} {'adherence':>10s} {'originals':>10s} "
      f"{'exact':>6s} {'originals':>10s}")
reports = {}
for split in ("train", "heldout"):
    r = reports[split] = evaluate_reconstructions(vae, n=1000, seed=4242, split=split)
    print(f"{split:8s} {r.psnr:8.1f} {r.frechet:8.2f} {r.frechet_floor:6.2f} {r.adherence:10.3f} "
          f"{r.adherence_originals:10.3f} {r.exact:6.3f} {r.exact_originals:10.3f}")

# %% [markdown]
# ## 5. What is lost: "preserves detail" is half true
#
# A popular article says SD's autoencoder "preserves detail". It preserves most of what a viewer
# looks at, and loses the rest on purpose: Rombach et al. choose the downsampling factor as a
# trade-off between cost and fidelity. The kl-f8 autoencoder used in SD reconstructs 256x256 COCO
# images at 23.4 dB PSNR (rFID 4.99), by the evaluation in Stability AI's model card for
# `sd-vae-ft-ema`; small text, small faces and thin structures are the familiar casualties. Ours
# shows the same trade on a small scale. Where do its errors sit?

# %%
batch = world.sample(500, seed=77)
x = batch.tensors()
recon = reconstruct(vae, x)
err = (recon - x).abs().mean(dim=1)                    # (N, 3, H, W) -> (N, H, W)
edges = F.max_pool2d(x.abs().sum(1, keepdim=True), 3, 1, 1) - (-F.max_pool2d(-x.abs().sum(1, keepdim=True), 3, 1, 1))
edges = edges[:, 0] > 0.5                              # pixels next to a colour change
fig, axes = plt.subplots(3, 8, figsize=(12, 4.8))
for i in range(8):
    axes[0, i].imshow(image_grid(x[i:i + 1], nrow=1, padding=0))
    axes[1, i].imshow(image_grid(recon[i:i + 1], nrow=1, padding=0))
    axes[2, i].imshow(err[i], cmap="magma", vmin=0, vmax=0.5)
for ax, label in zip(axes[:, 0], ["original", "reconstruction", "|error|"]):
    ax.set_ylabel(label)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.train.autoencoder import psnr

print(f"mean |error| at edges {err[edges].mean():.3f}, elsewhere {err[~edges].mean():.4f} "
      f"({edges.float().mean():.0%} of pixels are edge pixels)")
p = psnr(x, recon).numpy()
single = batch.kinds == 0
for size, name in ((0, "small"), (1, "large")):
    print(f"single {name} object: PSNR {p[single & (batch.sizes[:, 0] == size)].mean():.1f} dB")
print(f"pairs: {p[batch.kinds == 1].mean():.1f} dB, counts (2-3 objects): {p[batch.kinds == 2].mean():.1f} dB")

# %% [markdown]
# The error lives on edges: an edge pixel is off about six times as much as any other pixel, and
# the more outline an image has, the lower its PSNR (a single small object scores highest, then a
# large one, then pairs, then counts of two or three). Now detail that ShapeWorld never has:
# one-pixel stripes and checkerboards, noise, and real handwriting. Each 8x8 latent position
# summarises a 4x4 patch with 4 numbers; a pattern that needs more than that cannot pass, however
# it is trained. The autoencoder is also a product of its data: it has learned to draw flat
# shapes, and draws them where it can.

# %%
from course_lib.worlds.mnist import MNIST5k

g = torch.Generator().manual_seed(0)
ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
digit = F.pad(MNIST5k("test").images[:1], (2, 2, 2, 2), value=-1.0)[0]
tests = {
    "stripes, 1 px": ((jj % 2) * 2.0 - 1).expand(3, 32, 32),
    "stripes, 4 px": ((jj // 4 % 2) * 2.0 - 1).expand(3, 32, 32),
    "checkerboard 2 px": (((ii // 2 + jj // 2) % 2) * 2.0 - 1).expand(3, 32, 32),
    "noise": torch.rand(3, 32, 32, generator=g) * 2 - 1,
    "a real digit": digit.expand(3, 32, 32),
    "a white square": torch.where((ii - 16).abs().maximum((jj - 16).abs()) < 7, 1.0, -1.0).expand(3, 32, 32),
}
probe = torch.stack(list(tests.values())).contiguous()
probe_recon = reconstruct(vae, probe)
show_images(torch.cat([probe, probe_recon]), nrow=len(tests), scale=1.6,
            title="unfamiliar detail (top) and its reconstruction (bottom)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for name, value in zip(tests, psnr(probe, probe_recon)):
    print(f"{name:18s} PSNR {value:5.1f} dB")

# %% [markdown]
# Coarse structure survives: the square comes back nearly exact, the digit's stroke with its shape
# (though not at ShapeWorld's PSNR), and the 4-pixel stripes keep their pattern but not their
# colours. One-pixel stripes, the 2-pixel checkerboard and the noise come back as coloured, blocky
# patches that keep nothing of the fine pattern. That is the deal latent diffusion makes: a 48x
# smaller space (12x here) for a little detail that the decoder redraws from what it learned. SD's
# perceptual and adversarial losses make the decoder redraw *plausible* texture instead of blur,
# which is why SD's images look sharp even where they are not faithful.
#
# ## 6. The latents, and the scale factor
#
# Four channels of 8x8 for each image. They are not a picture of the image, but the shapes show
# through: each latent position describes its 4x4 patch.

# %%
from course_lib.train.autoencoder import encode_latents

x = world.sample(6, seed=5).tensors()
z = encode_latents(vae, x, scale=False)                # (6, 3, 32, 32) -> (6, 4, 8, 8), the posterior means
lim = float(z.abs().max())
fig, axes = plt.subplots(len(x), 5, figsize=(6.5, 8))
for i in range(len(x)):
    axes[i, 0].imshow(image_grid(x[i:i + 1], nrow=1, padding=0))
    for c in range(4):
        axes[i, c + 1].imshow(z[i, c], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
for c, ax in enumerate(axes[0]):
    ax.set_title("image" if c == 0 else f"latent ch {c - 1}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# A diffusion model adds noise of standard deviation 1 (notebook 05). If the latents had a standard
# deviation of 5, the noise schedule would be "off" by that factor: the signal would survive far
# longer than the schedule assumes. SD therefore multiplies every latent by one number before
# diffusion and divides by it before decoding. In the `ldm` code (`scale_by_std`), that number is
# measured once: encode the first training batch, **sample** each posterior, and take
# `1 / std` of all the numbers together. For SD's autoencoder it came out as **0.18215**
# (latent std about 5.49). `compute_scale_factor` does the same on 2,048 of our training images:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.vae import compute_scale_factor

images = world.sample(2048, seed=0).tensors()
scale = compute_scale_factor(vae, images, generator=torch.Generator().manual_seed(0))
print(f"scale factor {scale:.4f} (latent std {1 / scale:.3f}); stored with the shipped weights: "
      f"{vae.config.scaling_factor:.4f}; SD 1.x/2.x: 0.18215 (latent std {1 / 0.18215:.3f})")
z = encode_latents(vae, images, scale=True)
print(f"scaled latents: std {z.std():.3f}, mean {z.mean():.3f}; per channel std "
      + ", ".join(f"{s:.2f}" for s in z.std(dim=(0, 2, 3))) + ", mean "
      + ", ".join(f"{m:+.2f}" for m in z.mean(dim=(0, 2, 3))))

# %% [markdown]
# One number for all channels, as in SD: the channels keep their own spreads and means, and the
# diffusion model learns them. (SDXL and SD3 later used per-channel shifts and scales.)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(encode_latents(vae, images, scale=False).flatten().numpy(), bins=100, alpha=0.6, density=True,
        label="latents")
ax.hist(z.flatten().numpy(), bins=100, alpha=0.6, density=True, label=f"latents x {scale:.3f}")
grid = np.linspace(-4, 4, 200)
ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
ax.set_xlim(-8, 8)
ax.legend(fontsize=8)
ax.set_title("the noise a diffusion model adds has std 1; now the latents do too")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. What the KL weight does
#
# `scripts/train_autoencoder.py --kl-sweep` trained the same autoencoder briefly at four KL
# weights, from SD's 1e-6 up to 0.1, and measured each. Besides PSNR and the latents' spread, it
# decoded 500 random latents drawn from the prior N(0, 1) (at the latents' scale) and measured
# their Frechet distance from real images: is the autoencoder, alone, a generator?

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.core.paths import REPO_ROOT

sweep = json.loads((REPO_ROOT / "benchmarks" / "results" / "vae_kl_sweep.json").read_text())
print("made by:", sweep["command"])
print(f"{'KL weight':>9s} {'PSNR dB':>8s} {'KL/latent':>10s} {'latent std':>11s} {'posterior std':>14s} "
      f"{'scale':>7s} {'Frechet recon':>14s} {'Frechet prior samples':>22s}")
for row in sweep["rows"]:
    print(f"{row['kl_weight']:9.0e} {row['psnr']:8.1f} {row['kl_per_latent']:10.2f} {row['latent_std']:11.2f} "
          f"{row['posterior_std']:14.3f} {row['scale_factor']:7.3f} {row['frechet_recon']:14.1f} "
          f"{row['frechet_prior_samples']:22.1f}")
print(f"Frechet floor (real vs real): {sweep['frechet_floor']:.2f}")

# %%
rows = sweep["rows"]
w = [r["kl_weight"] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
axes[0].plot(w, [r["psnr"] for r in rows], "o-")
axes[0].set(ylabel="PSNR (dB)", title="reconstruction")
axes[1].plot(w, [r["latent_std"] for r in rows], "o-", label="std of latent means")
axes[1].plot(w, [r["posterior_std"] for r in rows], "s-", label="posterior std (noise)")
axes[1].set(title="the latents", yscale="log")
axes[1].legend(fontsize=8)
axes[2].plot(w, [r["frechet_prior_samples"] for r in rows], "o-", label="decoded prior samples")
axes[2].plot(w, [r["frechet_recon"] for r in rows], "s-", label="reconstructions")
axes[2].axhline(sweep["frechet_floor"], color="gray", ls="--", label="floor")
axes[2].set(title="Frechet distance", yscale="log")
axes[2].legend(fontsize=8)
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("KL weight")
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read from left to right: a larger KL weight pushes the posteriors towards N(0, 1): the means
# shrink towards 0, the posterior noise grows towards 1, and the latent carries less about the
# image, so PSNR falls. In exchange, random prior samples decode to more image-like pictures. SD
# sits at the far left on purpose: it wants the best reconstructions, and leaves the job of
# generating to the diffusion model. Its latents are therefore *not* N(0, 1) (std 5.49, hence the
# scale factor). Our shipped autoencoder is at the left too; random latents decode to this:

# %%
from course_lib.train.autoencoder import decode_latents

noise = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
show_images(decode_latents(vae, noise, scaled=True), nrow=16, title="decoding N(0, 1) latents: not images")
plt.show()

# %% [markdown]
# Random latents do not make ShapeWorld scenes. Generating is the diffusion model's job: trained on
# the scaled latents `encode_latents(vae, images)`, it learns where real latents lie, and
# `decode_latents` turns its samples into pictures (notebook 10 assembles the whole pipeline).
#
# ## Summary
# * Latent diffusion runs the U-Net on a small latent instead of pixels: 48x fewer numbers for SD
#   (512x512x3 -> 64x64x4), 12x here (32x32x3 -> 8x8x4). One latent U-Net step costs about 16x fewer
#   operations than the same U-Net on pixels; the decoder runs once per image.
# * SD's KL autoencoder: residual blocks, a middle self-attention block, a diagonal Gaussian
#   posterior from `quant_conv`, `post_quant_conv` before the decoder. Ours computes the same
#   numbers as diffusers' `AutoencoderKL` on the same weights.
# * The autoencoder does not "preserve detail" for free: errors sit on edges, and one- and
#   two-pixel patterns are lost. SD trained its autoencoder with L1, a perceptual loss and a
#   patch-GAN discriminator, the only discriminator in SD, used only in that training.
# * The scale factor is `1 / std` of sampled latents (SD: 0.18215; ours is stored in
#   `vae.config.scaling_factor`) and gives the diffusion model unit-variance latents.
# * The KL weight trades reconstruction for latents that look like N(0, 1); SD keeps it at 1e-6
#   and lets diffusion do the generating. `course_lib.models.vae` and `course_lib.train.autoencoder`
#   (`load_shipped_autoencoder`, `encode_latents`, `decode_latents`) carry this into notebooks 09-10.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** SDXL generates 1024x1024 RGB images with an autoencoder of the same shape as SD's
# (8x smaller per side, 4 latent channels). How many numbers does its diffusion model denoise per
# image?

# %%
from course_lib.core.exercises import check

answer_1 = None  # an int
check(answer_1, lambda a: a == 4 * (1024 // 8) ** 2,
      hint="Channels x (height / 8) x (width / 8).")

# %% [markdown]
# **2.** SD measured its scale factor on *samples* of the posterior. Compute ours from the posterior
# *means* instead (`compute_scale_factor(..., sample_posterior=False)` on the 2,048 `images` above).
# Is it larger or smaller than the sampled one, and why? Give the number.

# %%
answer_2 = None  # a float
check(answer_2, lambda a: abs(a - compute_scale_factor(vae, images, sample_posterior=False)) < 1e-3,
      hint="Sampling adds the posterior's own noise to the means: more spread, smaller 1/std.")

# %% [markdown]
# **3.** What shape does our autoencoder's latent have for a batch of two 64x64 images? Answer a
# tuple, then check it by encoding `torch.zeros(2, 3, 64, 64)`.

# %%
answer_3 = None  # a tuple of 4 ints
check(answer_3, lambda a: tuple(a) == tuple(vae.encode(torch.zeros(2, 3, 64, 64)).mean.shape),
      hint="The autoencoder is fully convolutional: 4x smaller per side, 4 channels.")
