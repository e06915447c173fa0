# %% [markdown]
# # 03 · The U-Net: seeing the whole image and every pixel
#
# Stable Diffusion's denoiser is a U-Net: an encoder that shrinks the image to see it whole, a
# decoder that grows it back, and skip connections that hand the decoder every detail the encoder
# saw on its way down. The U-Net was invented for something else, labelling every pixel of a
# microscope image (Ronneberger, Fischer and Brox 2015), and that job shows most clearly what its
# skips are for. So we first train one to segment ShapeWorld images, with and without skips, and
# then build the denoising U-Net that later notebooks train, part by part, each part checked
# against `diffusers` on the same weights.
#
# **After this notebook you will be able to:**
# - build a segmentation U-Net and the same encoder-decoder without skip connections, and measure
#   with intersection-over-union what the skips buy;
# - explain why the U-Net is a *fully convolutional* network (not a "fully connected" one, as a
#   popular article says), and run one trained network on images of other sizes;
# - write the denoising U-Net's parts: the sinusoidal timestep embedding, self-attention over
#   pixels, down- and upsampling, and show each equals its `diffusers` counterpart;
# - read the errors a U-Net gives for an image size it cannot halve or a channel count GroupNorm
#   cannot split.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.utils import count_parameters, seed_everything

seed_everything(0)
# Everything here runs on the CPU in seconds; the numbers below are reproducible.
print("torch", torch.__version__)

# %% [markdown]
# ## 1. The U-Net on its original job: segmentation
#
# **Segmentation** labels every pixel. Here: is this pixel background, or part of a circle, a
# square, a triangle or a cross? Deciding *which* shape a pixel belongs to needs context (a pixel
# in the middle of a square looks like a pixel in the middle of a circle); drawing the shape's
# *edge* exactly needs full resolution. A U-Net has both:
#
# * the **encoder** halves the resolution level by level (32, 16, 8, 4 pixels across) while adding
#   channels: each deep feature sees a large part of the image;
# * the **decoder** doubles the resolution back, level by level;
# * the **skip connections** hand the decoder, at each resolution, the encoder's feature map of the
#   same size: the exact positions of the edges, which the 4x4 bottleneck has lost.
#
# ### 1.1 The data
# ShapeWorld (notebook 00) knows the truth of every pixel: `semantic_masks()` gives the shape class.

# %%
from course_lib.train.segmentation import CLASS_NAMES, shapeworld_segmentation_data

train_images, train_masks = shapeworld_segmentation_data(20000, seed=0)   # the shipped weights' training set
test_images, test_masks = shapeworld_segmentation_data(1000, seed=2024)   # fresh images, never trained on
print("classes:", ", ".join(f"{i} {c}" for i, c in enumerate(CLASS_NAMES)))
print("images", tuple(train_images.shape), "masks", tuple(train_masks.shape), train_masks.dtype)

MASK_CMAP = plt.matplotlib.colors.ListedColormap(["black", "tab:red", "tab:blue", "tab:green", "tab:orange"])


def show_row(axes, images, title=None, kind="image"):
    """One row of pictures: kind "image" (RGB in [-1, 1]), "mask" (class per pixel) or "error" (bool)."""
    for i, ax in enumerate(axes):
        if kind == "mask":
            ax.imshow(images[i], cmap=MASK_CMAP, vmin=0, vmax=4, interpolation="nearest")
        elif kind == "error":
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(((images[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        axes[0].set_ylabel(title, fontsize=9)


fig, axes = plt.subplots(2, 8, figsize=(11, 3))
show_row(axes[0], test_images, "image")
show_row(axes[1], test_masks, "shape mask", kind="mask")
fig.suptitle("mask colours: circle red, square blue, triangle green, cross orange (any shape can have any colour)", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 1.2 The network, in plain sight
# Ronneberger et al.'s design, small: at each level two 3x3 convolutions (we add BatchNorm so that a
# few hundred steps suffice), 2x2 max-pooling down, a 2x2 transposed convolution ("up-convolution")
# up, and the skip: `torch.cat([upsampled, encoder_map], dim=1)`. `skip=False` makes the twin: the
# same encoder and decoder, each decoder level seeing only what came up from below.

# %%
class DoubleConv(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegUNet(nn.Module):
    def __init__(self, channels=(8, 16, 32, 64), num_classes=5, skip=True):
        super().__init__()
        self.skip = skip
        self.down = nn.ModuleList([DoubleConv(3 if i == 0 else channels[i - 1], c) for i, c in enumerate(channels)])
        deep_to_shallow = list(range(len(channels) - 1, 0, -1))      # 3, 2, 1
        self.up = nn.ModuleList([nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2)
                                 for i in deep_to_shallow])
        self.dec = nn.ModuleList([DoubleConv(channels[i - 1] * (2 if skip else 1), channels[i - 1])
                                  for i in deep_to_shallow])
        self.head = nn.Conv2d(channels[0], num_classes, 1)          # a 1x1 conv: class scores per pixel

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)                              # (B, C, H, W) -> (B, C, H/2, W/2)
            x = block(x)
            skips.append(x)
        skips.pop()                                                 # the bottleneck itself is no skip
        for up, block in zip(self.up, self.dec):
            x = up(x)                                               # (B, 2C, H/2, W/2) -> (B, C, H, W)
            s = skips.pop()
            x = block(torch.cat([x, s], dim=1) if self.skip else x)
        return self.head(x)                                         # (B, 5, H, W)


for skip in (True, False):
    net = SegUNet(skip=skip)
    print(f"skip={skip!s:5s}: {count_parameters(net):,} parameters, "
          f"output {tuple(net(test_images[:2]).shape)} for input {tuple(test_images[:2].shape)}")

# %% [markdown]
# `course_lib.models.segmentation.SegmentationUNet` is this network (with input checks); on the same
# weights it gives exactly the same output:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.segmentation import SegmentationUNet, SegmentationUNetConfig

for skip in (True, False):
    seed_everything(0)
    mine, lib = SegUNet(skip=skip).eval(), SegmentationUNet(SegmentationUNetConfig(skip=skip)).eval()
    lib.load_state_dict(mine.state_dict())
    with torch.no_grad():
        print(f"skip={skip!s:5s}: identical output: {torch.equal(mine(test_images[:8]), lib(test_images[:8]))}")

# %% [markdown]
# ### 1.3 Training both, briefly
# Per-pixel cross-entropy, AdamW, 150 steps of 32 images, the same images in the same order for
# both networks. (The progress bar shows in Jupyter.)

# %%
from course_lib.models.segmentation import mean_iou, predict
from course_lib.train.segmentation import train_segmenter

live = {}
for skip in (True, False):
    seed_everything(0)
    net = SegmentationUNet(SegmentationUNetConfig(skip=skip))
    live[skip] = (net, train_segmenter(net, train_images, train_masks, steps=150, seed=0,
                                       desc="with skips" if skip else "without skips"))

fig, ax = plt.subplots(figsize=(6, 3.2))
for skip, color in ((True, "C0"), (False, "C3")):
    ax.plot(np.convolve(live[skip][1].losses, np.ones(10) / 10, mode="valid"), color=color,
            label="with skips" if skip else "without skips")
ax.set_xlabel("step")
ax.set_ylabel("loss (10-step mean)")
ax.set_yscale("log")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
for skip in (True, False):
    print(f"after 150 steps, {'with' if skip else 'without'} skips: mean IoU on fresh images "
          f"{mean_iou(predict(live[skip][0], test_images), test_masks):.2f}")

# %% [markdown]
# In 150 steps both losses fall, about equally (the network without skips is even a little lower
# most of the way), but on fresh images the network with skips is already the better segmenter by
# mean IoU. To compare the two *trained*, the course ships both trained for 3,000 steps by
# `scripts/train_segmentation.py` (the same `train_segmenter`, the same seed; the training times
# are printed below). Their training curves, stored with the weights:

# %%
from course_lib.core.checkpoints import load_checkpoint, load_weights
from course_lib.models.segmentation import boundary_pixels, iou_per_class

shipped, curves = {}, {}
for skip, name in ((True, "segmentation_unet"), (False, "segmentation_unet_no_skip")):
    shipped[skip] = load_checkpoint(name, SegmentationUNet)
    curves[skip] = load_weights(name)[1]["metrics"]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
for skip, color in ((True, "C0"), (False, "C3")):
    label = "with skips" if skip else "without skips"
    loss = curves[skip]["loss_every_10_steps"]
    axes[0].plot(np.arange(1, len(loss) + 1) * 10, loss, color=color, label=label)
    axes[1].plot(curves[skip]["eval_steps"], curves[skip]["eval_mean_iou_curve"], "o-", ms=3, color=color,
                 label=label)
axes[0].set_yscale("log")
axes[0].set_ylabel("training loss")
axes[1].set_ylabel("mean IoU, 500 held-back images")
for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()
for skip in (True, False):
    c = curves[skip]
    reached = next(s for s, v in zip(c["eval_steps"], c["eval_mean_iou_curve"]) if v >= 0.95)
    print(f"{'with' if skip else 'without'} skips: {c['train']['steps']:,} steps in {c['train_minutes']:.1f} min; "
          f"mean IoU first at 0.95 or above at step {reached:,}")

# %% [markdown]
# ### 1.4 What the skips buy, in numbers
# **Intersection over union** (IoU) of a class: the pixels both the prediction and the truth give
# that class, divided by the pixels either gives it. 1 is perfect; predicting a shape one pixel too
# large all round costs a small shape a lot. The mean over the 5 classes is the usual summary. We
# also count how many *edge* pixels (those with a differently labelled neighbour) each network gets
# right: edges are where fine detail lives.

# %%
# NBVAL_CHECK_OUTPUT
edges = boundary_pixels(test_masks)
preds = {skip: predict(shipped[skip], test_images) for skip in (True, False)}
rows = [f"{'1,000 fresh images':20s}" + "".join(f"{c:>11s}" for c in CLASS_NAMES) + f"{'mean IoU':>10s}"
        + f"{'edge px right':>15s}"]
for skip in (True, False):
    iou = iou_per_class(preds[skip], test_masks)
    edge_acc = (preds[skip][edges] == test_masks[edges]).float().mean()
    rows.append(f"{'with skips' if skip else 'without skips':20s}" + "".join(f"{v:11.3f}" for v in iou)
                + f"{iou.nanmean():10.3f}{edge_acc:15.3f}")
print("\n".join(rows))
print(f"parameters: with skips {count_parameters(shipped[True]):,}, without {count_parameters(shipped[False]):,}")

# %% [markdown]
# ### 1.5 ... and in pictures
# Rows: the image, the truth, each network's prediction, and where each is wrong (white). We pick
# the test images on which the network without skips does worst.

# %%
wrong = {skip: preds[skip] != test_masks for skip in (True, False)}
worst = wrong[False].flatten(1).sum(1).argsort(descending=True)[:8]
fig, axes = plt.subplots(6, 8, figsize=(11, 8.4))
show_row(axes[0], test_images[worst], "image")
show_row(axes[1], test_masks[worst], "truth", kind="mask")
show_row(axes[2], preds[True][worst], "with skips", kind="mask")
show_row(axes[3], preds[False][worst], "without skips", kind="mask")
for row, skip in ((4, True), (5, False)):
    show_row(axes[row], wrong[skip][worst], f"errors, {'with' if skip else 'without'}", kind="error")
plt.tight_layout()
plt.show()

# %% [markdown]
# Without skips the network still knows *what* is where (the bottleneck's 4x4 map of 64 channels
# carries that), but it must redraw every edge from a map 8 times coarser than the image: its
# errors are scattered single pixels and short runs, and its cross arms and triangle sides come
# out ragged. With skips the decoder copies the edges from the encoder's full-resolution map,
# and on these images it makes no error at all.
#
# ### 1.6 Fully *convolutional*, not "fully connected"
# The popular article this course started from calls the U-Net a "fully connected" convolutional
# network. It is the opposite: a **fully convolutional** network (Long, Shelhamer and Darrell 2015;
# Ronneberger et al. 2015). It has no fully connected layer at all, only convolutions, pooling and
# up-convolutions, each applied the same way at every position. A fully connected layer would tie
# the network to one input size; a fully convolutional one runs on any size its poolings can halve.
# Count the layer types, then run the network trained on 32x32 images on bigger ones it has never
# seen: 2x2 mosaics of fresh test images (64x64) and 1x3 strips (32x96).

# %%
from collections import Counter

print(Counter(type(m).__name__ for m in shipped[True].modules() if not list(m.children())))


def tile(images, masks, rows, cols):
    """Put rows*cols images side by side: (N, 3, 32, 32) -> (N / (rows*cols), 3, 32*rows, 32*cols)."""
    n = len(images) // (rows * cols)
    x = images[:n * rows * cols].reshape(n, rows, cols, 3, 32, 32).permute(0, 3, 1, 4, 2, 5)
    m = masks[:n * rows * cols].reshape(n, rows, cols, 32, 32).permute(0, 1, 3, 2, 4)
    return x.reshape(n, 3, 32 * rows, 32 * cols), m.reshape(n, 32 * rows, 32 * cols)


big_images, big_masks = tile(test_images, test_masks, 2, 2)
strip_images, strip_masks = tile(test_images, test_masks, 1, 3)
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 1, 1.5, 1.5]})
pred_big = predict(shipped[True], big_images[:1])
axes[0].imshow(((big_images[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1))
axes[1].imshow(pred_big[0], cmap=MASK_CMAP, vmin=0, vmax=4, interpolation="nearest")
axes[2].imshow(((strip_images[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1))
axes[3].imshow(predict(shipped[True], strip_images[:1])[0], cmap=MASK_CMAP, vmin=0, vmax=4, interpolation="nearest")
for ax, t in zip(axes, ("64x64 mosaic", "its segmentation", "32x96 strip", "its segmentation")):
    ax.set_title(t, fontsize=9)
    ax.set_axis_off()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for what, (x, m) in {"32x32 test images": (test_images, test_masks), "64x64 mosaics": (big_images, big_masks),
                     "32x96 strips": (strip_images, strip_masks)}.items():
    rows.append(f"{what:18s} {tuple(x.shape[2:])}: mean IoU with skips {mean_iou(predict(shipped[True], x), m):.3f}, "
                f"without {mean_iou(predict(shipped[False], x), m):.3f}")
print("\n".join(rows))

# %% [markdown]
# Same weights, three image sizes, the same quality: the network slides the same filters over
# whatever it is given. That is why Stable Diffusion's U-Net, trained on 64x64 latents (512x512
# images), can also be run on other sizes; what changes at other sizes is what the model has *seen*
# at that size (its training images), not whether it can run. Scale matters in the same way here:
# ShapeWorld drawn at 64x64 has shapes twice as large as any the network trained on.

# %%
# NBVAL_CHECK_OUTPUT
x64, m64 = shapeworld_segmentation_data(300, seed=2025, image_size=64)
print(f"ShapeWorld drawn at 64x64 (shapes twice as large): mean IoU with skips "
      f"{mean_iou(predict(shipped[True], x64), m64):.3f}, without {mean_iou(predict(shipped[False], x64), m64):.3f}")

# %% [markdown]
# ## 2. The denoising U-Net
#
# A denoiser takes a noisy image `x_t` and the noise level `t` and predicts the noise (notebooks 05
# and 06). Its output has the same size as its input and must be right at every pixel: the same
# need as segmentation, so the same shape of network. Stable Diffusion's U-Net
# (`course_lib.models.unet.UNet`, keys identical to `diffusers`' `UNet2DModel` / `UNet2DConditionModel`)
# keeps the U and the skips and changes the parts:
#
# | segmentation U-Net (above) | denoising U-Net |
# |---|---|
# | two convs + BatchNorm + ReLU per level | residual blocks with GroupNorm + SiLU (notebook 02) |
# | no notion of time | a **timestep embedding** added inside every residual block |
# | only convolutions | **self-attention** at low resolution: every pixel can look at every other |
# | max-pooling, transposed conv | a stride-2 conv down; nearest-neighbour x2 + conv up |
# | 1x1 conv to class scores | GroupNorm, SiLU, 3x3 conv to the noise prediction |
#
# We write each new part in plain sight and check it against `diffusers` on the same weights.
#
# ### 2.1 The sinusoidal timestep embedding
# The network needs `t` (an integer from 0 to 999) as a vector. Following the Transformer's position
# encoding (Vaswani et al. 2017), each of `dim/2` frequencies, geometrically spaced from 1 down to
# 1/10000, contributes `cos(t·f)` and `sin(t·f)`: low frequencies tell far-apart timesteps apart,
# high ones neighbouring timesteps. Stable Diffusion puts the cosines first.

# %%
def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)  # (half,)
    angles = t[:, None].float() * freqs[None, :]                                                # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)                          # (B, dim)


t_all = torch.arange(1000)
emb = sinusoidal_embedding(t_all, 64)
fig, ax = plt.subplots(figsize=(8, 2.8))
im = ax.imshow(emb.T, aspect="auto", cmap="RdBu", interpolation="nearest")
ax.set_xlabel("timestep t")
ax.set_ylabel("dimension\n(cos 0-31, sin 32-63)")
fig.colorbar(im, ax=ax)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
from diffusers.models.embeddings import TimestepEmbedding as DiffusersTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding

from course_lib.models.unet import TimestepEmbedding, timestep_embedding

want = get_timestep_embedding(t_all, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
print("by hand == diffusers:", torch.allclose(emb, want, atol=1e-6, rtol=0),
      "| course_lib == diffusers:", torch.allclose(timestep_embedding(t_all, 64), want, atol=1e-6, rtol=0))

# The vector then goes through a small MLP (linear, SiLU, linear) to the size the resnets take.
seed_everything(0)
ref_mlp = DiffusersTimestepEmbedding(64, 256)
lib_mlp = TimestepEmbedding(64, 256)
lib_mlp.load_state_dict(ref_mlp.state_dict())
with torch.no_grad():
    print("TimestepEmbedding MLP, course_lib == diffusers:", torch.allclose(lib_mlp(want), ref_mlp(want), atol=1e-6))

# %% [markdown]
# ### 2.2 Self-attention over pixels
# Convolutions see a neighbourhood; self-attention lets every position look at every other. The
# feature map `(B, C, H, W)` becomes `H·W` tokens of `C` features; each token makes a query, a key
# and a value; each token's output is the average of all values weighted by
# `softmax(query · key / sqrt(d))`; the result is projected and added back (a residual again).

# %%
class SelfAttention(nn.Module):
    def __init__(self, channels, heads, groups, eps=1e-5):
        super().__init__()
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])  # diffusers' layout

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)              # (B, C, H, W) -> (B, H*W, C)

        def split(z):                                                        # (B, H*W, C) -> (B, heads, H*W, d)
            return z.view(b, h * w, self.heads, d).transpose(1, 2)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, heads, H*W, H*W)
        out = (weights @ v).transpose(1, 2).reshape(b, h * w, c)             # (B, H*W, C)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)        # back to (B, C, H, W)
        return x + out


# %%
# NBVAL_CHECK_OUTPUT
from diffusers.models.attention_processor import Attention as DiffusersAttention

from course_lib.models.attention import AttentionBlock

# This is how diffusers' UNet2DModel builds its attention blocks (and the SD autoencoder its mid block).
seed_everything(0)
ref_attn = DiffusersAttention(64, heads=4, dim_head=16, eps=1e-5, norm_num_groups=8, residual_connection=True,
                              bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).eval()
with torch.no_grad():
    for p in ref_attn.parameters():
        p.add_(0.1 * torch.randn_like(p))                  # no default value can hide a mistake
mine_attn, lib_attn = SelfAttention(64, heads=4, groups=8), AttentionBlock(64, num_heads=4, groups=8)
mine_attn.load_state_dict(ref_attn.state_dict())
lib_attn.load_state_dict(ref_attn.state_dict())
x = torch.randn(2, 64, 8, 8)
with torch.no_grad():
    want = ref_attn(x)
    print("by hand == diffusers:", torch.allclose(mine_attn(x), want, atol=1e-5, rtol=0),
          "| course_lib == diffusers:", torch.allclose(lib_attn(x), want, atol=1e-6, rtol=0))

# %% [markdown]
# Why only at low resolution? The weight matrix has `(H·W)^2` entries per head and image: it grows
# with the *fourth* power of the side.

# %%
# NBVAL_CHECK_OUTPUT
for side in (8, 16, 32, 64):
    print(f"{side:2d}x{side:<2d} feature map: {side * side:5d} tokens, attention matrix {(side * side) ** 2:>11,} entries")

# %% [markdown]
# Our small pixel-space U-Nets attend only at 8x8. Stable Diffusion's U-Net attends in its down and
# up blocks at latent resolutions 64, 32 and 16 (`attention_resolutions [4, 2, 1]`) and in its
# middle block, at 8x8 (notebook 09); its lowest down and up blocks, also at 8x8, have no
# attention. It can afford 64x64 only because its latent is already 8 times smaller than the
# 512x512 image (notebook 08), which is one of the reasons to diffuse in a latent space.
#
# ### 2.3 Down- and upsampling
# Down: a 3x3 convolution with stride 2 (learned, unlike max-pooling). Up: repeat every pixel 2x2
# (nearest neighbour), then a 3x3 convolution (unlike a transposed convolution, this does not make
# checkerboard artefacts; Odena et al. 2016).

# %%
# NBVAL_CHECK_OUTPUT
from diffusers.models.downsampling import Downsample2D as DiffusersDownsample2D
from diffusers.models.upsampling import Upsample2D as DiffusersUpsample2D

from course_lib.models.unet import Downsample2D, Upsample2D


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)                                      # (B, C, H, W) -> (B, C, H/2, W/2)


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))   # (B, C, H, W) -> (B, C, 2H, 2W)


seed_everything(0)
x = torch.randn(2, 32, 16, 16)
for name, ref, mine, lib in (
    ("downsample", DiffusersDownsample2D(32, use_conv=True, out_channels=32, padding=1, name="op"), Down(32),
     Downsample2D(32)),
    ("upsample", DiffusersUpsample2D(32, use_conv=True, out_channels=32), Up(32), Upsample2D(32)),
):
    mine.load_state_dict(ref.state_dict())
    lib.load_state_dict(ref.state_dict())
    with torch.no_grad():
        want = ref(x)
        print(f"{name:10s} {tuple(x.shape)} -> {tuple(want.shape)}: by hand == diffusers: "
              f"{torch.allclose(mine(x), want, atol=1e-6, rtol=0)}, course_lib == diffusers: "
              f"{torch.allclose(lib(x), want, atol=1e-6, rtol=0)}")

# %% [markdown]
# ### 2.4 The whole denoising U-Net
# `course_lib.models.unet.UNet` assembles these parts with the residual blocks of notebook 02. Three levels
# (32x32, 16x16, 8x8), one residual block per level on the way down and two on the way up (each
# eats one skip), self-attention at 8x8 and in the middle. Following one batch through it:

# %%
from course_lib.models.unet import UNet, UNetConfig

config = UNetConfig(in_channels=3, out_channels=3, sample_size=32, block_out_channels=(32, 64, 64),
                    layers_per_block=1, attention_levels=(2,), norm_num_groups=8,
                    num_attention_heads=None, attention_head_dim=16)
seed_everything(0)
unet = UNet(config).eval()
print(f"{count_parameters(unet):,} parameters")
shapes = []
for name in ["conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
             "up_blocks.1", "up_blocks.2", "conv_out"]:
    module = unet.get_submodule(name)
    module.register_forward_hook(lambda m, i, o, name=name: shapes.append(
        (name, tuple((o[0] if isinstance(o, tuple) else o).shape))))
x_t = torch.randn(4, 3, 32, 32)
with torch.no_grad():
    out = unet(x_t, torch.tensor([10, 250, 500, 990]))
for name, shape in shapes:
    print(f"{name:14s} -> {shape}")

# %% [markdown]
# It matches `diffusers`' `UNet2DModel` of the same configuration on the same weights (the
# test `tests/test_unet.py` also checks the text-conditioned `UNet2DConditionModel`, to 1e-4):

# %%
# NBVAL_CHECK_OUTPUT
from diffusers import UNet2DModel

seed_everything(0)
ref_unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=16,
                       norm_num_groups=8).eval()
with torch.no_grad():
    for p in ref_unet.parameters():
        p.add_(0.02 * torch.randn_like(p))
lib_unet = UNet(config).eval()
lib_unet.load_state_dict(ref_unet.state_dict())           # the same key names, no renaming
t = torch.tensor([10, 250, 500, 990])
with torch.no_grad():
    want, got = ref_unet(x_t, t).sample, lib_unet(x_t, t)
    changes_with_t = not torch.allclose(lib_unet(x_t, 10), lib_unet(x_t, 990), atol=1e-3)
print(f"{len(ref_unet.state_dict())} tensors loaded; course_lib UNet == diffusers UNet2DModel (1e-4): "
      f"{torch.allclose(got, want, atol=1e-4, rtol=0)}; the prediction depends on t: {changes_with_t}")

# %% [markdown]
# The denoising U-Net is fully convolutional too, apart from attention, which works on any number of
# tokens, and the time MLP, which never sees the image. The same weights run on other sizes:

# %%
with torch.no_grad():
    for size in ((32, 32), (64, 64), (24, 40)):
        print(f"input {size} -> output {tuple(lib_unet(torch.randn(1, 3, *size), 500).shape[2:])}")

# %% [markdown]
# ### 2.5 Bad input is a clear error
# A U-Net halves its input once per level below the top, so the sides must divide by
# `2**(levels - 1)`; GroupNorm splits channels into equal groups, so the group count must divide
# every level's channels. `course_lib` checks both early (when the model is built, or at the start
# of the forward pass) and says what to change:

# %%
attempts = {
    "sample_size=30 for 3 levels (30 / 4 is no integer)": lambda: UNet(UNetConfig(sample_size=30, norm_num_groups=8)),
    "an image of 36x36 for 4 levels": lambda: UNet(UNetConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8,
                                                              attention_levels=()))(torch.randn(1, 3, 36, 36), 5),
    "48 channels in 32 GroupNorm groups": lambda: UNet(UNetConfig(block_out_channels=(32, 48, 64))),
    "the segmentation U-Net on 30x30": lambda: shipped[True](torch.randn(1, 3, 30, 30)),
}
for what, attempt in attempts.items():
    try:
        attempt()
        print(f"{what}: no error?!")
    except ValueError as e:
        print(f"{what}:\n    ValueError: {e}\n")

# %% [markdown]
# ## Summary
# * The U-Net is a **fully convolutional** network (not "fully connected"): no layer depends on the
#   image size. Our segmentation U-Net trained on 32x32 ShapeWorld images segments 64x64 mosaics and
#   32x96 strips as well as 32x32 images.
# * What the skips buy, measured on 1,000 fresh images (the table in 1.4): a higher mean IoU and
#   more edge pixels right, and faster training (the shipped runs in 1.3 first reached a mean IoU
#   of 0.95 at step 700 with skips, 1,500 without). Without skips, the decoder must redraw every
#   edge from a 4x4 bottleneck.
# * The denoising U-Net keeps the U and the skips and changes the parts: residual blocks with a
#   sinusoidal **timestep embedding**, **self-attention** at low resolution (its cost grows with the
#   fourth power of the side), a strided convolution down and nearest-neighbour + convolution up.
#   Each part, and the whole `course_lib.models.unet.UNet`, gives the same output as `diffusers` on the
#   same weights.
# * Sizes a U-Net cannot halve and channel counts GroupNorm cannot split are errors that say what
#   to change, raised when the model is built or called.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** A U-Net with 4 levels (`block_out_channels` of length 4). Which of these image sides can it
# take: 28, 32, 40, 44, 48, 60, 64? Answer with the list.

# %%
from course_lib.core.exercises import check


def _accepted(side: int) -> bool:
    try:
        UNet(UNetConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=8, attention_levels=(),
                        num_attention_heads=1, sample_size=side))
        return True
    except ValueError:
        return False


answer_1 = None  # a list of ints
check(answer_1, lambda a: sorted(a) == [s for s in (28, 32, 40, 44, 48, 60, 64) if _accepted(s)],
      hint="4 levels halve the image 3 times: the side must be a multiple of 2**3.")

# %% [markdown]
# **2.** Compute by hand the IoU of class 1 (circle) between this prediction and this truth, then
# check it against `iou_per_class`.

# %%
truth = torch.tensor([[0, 1, 1, 0],
                      [0, 1, 1, 0],
                      [0, 1, 1, 0]])
prediction = torch.tensor([[0, 1, 1, 1],
                           [0, 1, 1, 1],
                           [0, 0, 0, 0]])
answer_2 = None  # a float
check(answer_2, lambda a: abs(a - iou_per_class(prediction, truth)[1].item()) < 1e-6,
      hint="Intersection: pixels that are 1 in both. Union: pixels that are 1 in either.")

# %% [markdown]
# **3.** Stable Diffusion 1.x attends at its 64x64 latent with 8 heads. How many entries do the
# attention matrices of *one* such layer hold for one image (all heads together)?

# %%
answer_3 = None  # an int
check(answer_3, lambda a: a == 8 * (64 * 64) ** 2,
      hint="Each head has a (H*W) x (H*W) matrix of weights.")
