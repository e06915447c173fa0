# %% [markdown]
# # 02 · ResNet blocks: why residual connections let deep networks train
#
# Every network in Stable Diffusion, the denoising U-Net and the autoencoder alike, is a stack of
# *residual blocks*: each block computes a correction `f(h)` and adds it to its input,
# `h + f(h)`. This notebook measures why. We train the same 30-layer network twice, once plain and
# once with skip connections, watch the gradient that reaches every layer, and then build Stable
# Diffusion's own residual block and check it against the reference implementation.
#
# **After this notebook you will be able to:**
# - explain, with measured gradient norms, why a deep plain network fails to train and the same
#   network with skip connections trains;
# - write Stable Diffusion's residual block (GroupNorm, SiLU, 3x3 convolutions, the time embedding
#   added in the middle, dropout, a 1x1 shortcut when the channel count changes) from memory;
# - load the weights of `diffusers`' `ResnetBlock2D` into your own block and show the two agree;
# - choose GroupNorm group counts that fit a channel count, and read the error when they do not.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.utils import count_parameters, seed_everything
from course_lib.worlds.mnist import MNIST5k

seed_everything(0)
# The networks here are tiny: they run on the CPU everywhere, so every number below is reproducible.
train, test = MNIST5k("train"), MNIST5k("test")
print(f"{len(train)} training digits, {len(test)} test digits, images {tuple(train.images.shape[1:])}")

# %% [markdown]
# ## 1. Depth breaks plain networks
#
# Take a layer `f(h) = W · SiLU(GroupNorm(h)) + b`: the recipe of Stable Diffusion's blocks
# (normalise, activate, then a linear map), here on vectors of 64 features instead of images.
# Stack 30 of them between a linear *stem* (784 pixels to 64 features) and a linear *head*
# (64 features to 10 digit scores). Two ways to stack:
#
# * **plain:** `h ← f(h)`; each layer replaces its input;
# * **residual:** `h ← h + f(h)`; each layer adds a correction to its input (He et al. 2016).
#
# Same layers, same parameters, same initial weights; only the `+ h` differs. Written out:

# %%
WIDTH, DEPTH = 64, 30


class Layer(nn.Module):
    """f(h) = linear(silu(groupnorm(h))): (B, 64) -> (B, 64)."""

    def __init__(self, width: int, groups: int | None = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, width) if groups else nn.Identity()
        self.linear = nn.Linear(width, width)

    def forward(self, h):
        return self.linear(F.silu(self.norm(h)))


class DeepNet(nn.Module):
    def __init__(self, depth: int, residual: bool, groups: int | None = 8):
        super().__init__()
        self.residual = residual
        self.stem = nn.Linear(28 * 28, WIDTH)
        self.layers = nn.ModuleList([Layer(WIDTH, groups) for _ in range(depth)])
        self.norm_out = nn.GroupNorm(groups, WIDTH) if groups else nn.Identity()
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x):
        h = self.stem(x.flatten(1))                         # (B, 1, 28, 28) -> (B, 784) -> (B, 64)
        for layer in self.layers:
            h = h + layer(h) if self.residual else layer(h)  # the only difference
        return self.head(F.silu(self.norm_out(h)))         # (B, 64) -> (B, 10)


seed_everything(0)
plain = DeepNet(DEPTH, residual=False)
residual = DeepNet(DEPTH, residual=True)
residual.load_state_dict(plain.state_dict())               # identical weights
print(f"each network: {count_parameters(plain):,} parameters in {DEPTH} layers")

# %% [markdown]
# ### 1.1 The gradient each layer receives, before any training
# Backpropagation multiplies the gradient by one Jacobian per layer on its way from the loss down to
# layer 1. In the plain network the gradient at layer 1 is a product of 30 Jacobians; if they
# shrink vectors it vanishes, if they stretch them it explodes. In the residual network layer k
# passes the gradient through `I + J_k`: the identity carries it down unchanged and the Jacobians
# only add corrections.
#
# We measure the norm of the gradient of the loss with respect to each layer's weight matrix, on one
# batch of 256 digits, for the two networks and also for both without normalisation (PyTorch's
# default initialisation, no GroupNorm).

# %%
def gradient_per_layer(net, images, labels):
    net.zero_grad()
    F.cross_entropy(net(images), labels).backward()
    norms = torch.stack([layer.linear.weight.grad.norm() for layer in net.layers])
    net.zero_grad()
    return norms


x0, y0 = train.images[:256], train.labels[:256]
at_init = {}
for groups, norm_name in ((8, "GroupNorm"), (None, "no norm")):
    seed_everything(0)
    p = DeepNet(DEPTH, residual=False, groups=groups)
    r = DeepNet(DEPTH, residual=True, groups=groups)
    r.load_state_dict(p.state_dict())
    at_init[f"plain, {norm_name}"] = gradient_per_layer(p, x0, y0)
    at_init[f"residual, {norm_name}"] = gradient_per_layer(r, x0, y0)

fig, ax = plt.subplots(figsize=(7, 3.8))
for (name, g), style in zip(at_init.items(), ["C3-", "C0-", "C3--", "C0--"]):
    ax.semilogy(np.arange(1, DEPTH + 1), g, style, label=name)
ax.set_xlabel("layer (1 = next to the input)")
ax.set_ylabel("gradient norm of the layer's weights")
ax.set_title("Gradient per layer at initialisation, 30 layers")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
rows = [f"{'network':22s} {'layer 1':>9s} {'layer 30':>9s} {'layer 1 / layer 30':>19s}"]
for name, g in at_init.items():
    rows.append(f"{name:22s} {g[0]:9.2g} {g[-1]:9.2g} {g[0] / g[-1]:19.2g}")
print("\n".join(rows))

# %% [markdown]
# Without normalisation the plain network's gradient **vanishes**: layer 1 gets about 10^-15 of
# what layer 30 gets, so no learning rate can train both ends. With GroupNorm (what Stable
# Diffusion uses) the plain network's gradient does not vanish at initialisation; it *grows*
# towards the input instead, about 20 times larger at layer 1 than at layer 30. The residual
# networks spread the gradient evenly: every layer gets the same order of magnitude, with or
# without normalisation.
#
# ### 1.2 Training both
# Same data, same batches in the same order, SGD with momentum, learning rate 0.05, 400 steps of 64
# digits (about 6 passes over the 4,500 training digits). `course_lib.models.depth` keeps this experiment's
# networks (`course_lib.train.depth` its training); first we check that its `DeepMLP` is exactly the network
# written above.

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.depth import DeepMLP, DeepMLPConfig, accuracy, mean_loss
from course_lib.train.depth import train_classifier

lib_plain = DeepMLP(DeepMLPConfig(depth=DEPTH, width=WIDTH, residual=False))
lib_plain.load_state_dict(plain.state_dict())              # same parameter names, so this just works
with torch.no_grad():
    same = torch.equal(lib_plain(x0), plain(x0))
print("course_lib.models.depth.DeepMLP gives exactly the same output on the same weights:", same)

# %%
histories, nets = {}, {}
for name, is_residual in (("plain", False), ("residual", True)):
    seed_everything(0)
    nets[name] = DeepMLP(DeepMLPConfig(depth=DEPTH, width=WIDTH, residual=is_residual))
    histories[name] = train_classifier(nets[name], train.images, train.labels, steps=400, lr=0.05,
                                       desc=f"{name}, {DEPTH} layers")

fig, ax = plt.subplots(figsize=(6.5, 3.5))
for name, color in (("plain", "C3"), ("residual", "C0")):
    losses = np.convolve(histories[name].losses, np.ones(10) / 10, mode="valid")
    ax.plot(np.arange(10, 401), losses, color=color, label=f"{name}, {DEPTH} layers")
ax.axhline(np.log(10), color="gray", ls=":", label="chance: log 10")
ax.set_xlabel("step")
ax.set_ylabel("training loss (10-step mean)")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
rows = [f"{'30 layers':10s} {'train loss':>10s} {'test accuracy':>14s}"]
for name, net in nets.items():
    rows.append(f"{name:10s} {mean_loss(net, train.images, train.labels):10.2f} "
                f"{accuracy(net, test.images, test.labels):14.2f}")
print("\n".join(rows))

# %% [markdown]
# The plain network never leaves chance (loss log 10 = 2.30, accuracy 0.10: it guesses). The
# residual network, with exactly the same layers, reaches about 90% on digits it has never seen.
#
# ### 1.3 The gradients during training
# Every layer's gradient norm at every step, as a picture: rows are layers, columns are steps (on a
# log scale, so that the first few steps get room), the colour is log10 of the norm.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, name in zip(axes, ("plain", "residual")):
    g = histories[name].grad_norms.T.clamp(min=1e-16).log10()   # (steps, depth) -> (depth, steps)
    steps_edges = np.arange(g.shape[1] + 1) + 0.5                # cell edges around steps 1, 2, ...
    layer_edges = np.arange(DEPTH + 1) + 0.5
    im = ax.pcolormesh(steps_edges, layer_edges, g.numpy(), cmap="viridis", vmin=-12, vmax=2)
    ax.set_xscale("log")
    ax.set_title(f"{name}: log10 gradient norm")
    ax.set_xlabel("step (log scale)")
axes[0].set_ylabel("layer")
fig.colorbar(im, ax=axes, shrink=0.9)
plt.show()

# %%
for name, h in histories.items():
    g = h.grad_norms
    print(f"{name:9s} layer 1: step 1 {g[0, 0]:.1e}, step 2 {g[1, 0]:.1e}, step 3 {g[2, 0]:.1e}, "
          f"last 50 steps {g[-50:, 0].mean():.1e}   |  layer 30, last 50 steps {g[-50:, -1].mean():.1e}")

# %% [markdown]
# The picture tells the story. The plain network starts with gradients far too large near the input;
# the first steps jolt its early layers, and their gradient collapses: at layer 1 by more than four
# orders of magnitude within three steps and by about thirteen by the end of the run. Layers 1 to 10
# have effectively stopped learning, and the last layers cannot classify from what the frozen early
# layers pass them. (A lower learning rate does not rescue it: exercise 2 measures that.) In the
# residual network every layer keeps a gradient of about 0.1 from the second step to the end.
#
# ### 1.4 It is depth that breaks the plain network
# Is the plain design simply bad? Train both at 3, 10 and 30 layers.

# %%
sweep = {}
for depth in (3, 10, DEPTH):
    for name, is_residual in (("plain", False), ("residual", True)):
        if depth == DEPTH:
            net = nets[name]                                 # trained above
        else:
            seed_everything(0)
            net = DeepMLP(DeepMLPConfig(depth=depth, width=WIDTH, residual=is_residual))
            train_classifier(net, train.images, train.labels, steps=400, lr=0.05, desc=f"{name}, {depth} layers")
        sweep[name, depth] = (mean_loss(net, train.images, train.labels), accuracy(net, test.images, test.labels))

fig, ax = plt.subplots(figsize=(5.5, 3.3))
depths = [3, 10, DEPTH]
for k, (name, color) in enumerate((("plain", "C3"), ("residual", "C0"))):
    ax.bar(np.arange(3) + (k - 0.5) * 0.38, [sweep[name, d][1] for d in depths], 0.38, color=color, label=name)
ax.set_xticks(range(3), [f"{d} layers" for d in depths])
ax.set_ylabel("test accuracy")
ax.axhline(0.1, color="gray", ls=":")
ax.legend(loc="center left")
plt.show()

# %%
rows = [f"{'depth':>5s} {'plain loss':>11s} {'plain acc':>10s} {'residual loss':>14s} {'residual acc':>13s}"]
for d in depths:
    (pl, pa), (rl, ra) = sweep["plain", d], sweep["residual", d]
    rows.append(f"{d:5d} {pl:11.2f} {pa:10.2f} {rl:14.2f} {ra:13.2f}")
print("\n".join(rows))

# %% [markdown]
# The exact losses move a little from one CPU to another (float rounding takes another path through
# 400 steps of training); what the experiment shows does not, and the next cell checks it:

# %%
# NBVAL_CHECK_OUTPUT
print("3 plain layers train (test accuracy > 0.8):", sweep["plain", 3][1] > 0.8)
print("10 and 30 plain layers fail (accuracy at chance, < 0.2):", all(sweep["plain", d][1] < 0.2 for d in (10, DEPTH)))
print("residual networks train at every depth (accuracy > 0.8):", all(sweep["residual", d][1] > 0.8 for d in depths))

# %% [markdown]
# Three plain layers train fine; ten already fail. With skip connections depth costs nothing here.
# This is He et al.'s *degradation problem* (2016): deeper plain networks train *worse*, even on
# the training set, so it is not overfitting; it is optimisation. Skip connections remove it, which
# is why every block of Stable Diffusion's U-Net and autoencoder is residual.
#
# ## 2. Stable Diffusion's residual block
#
# The U-Net's block (`ResBlock` in the original `ldm/modules/diffusionmodules/openaimodel.py`,
# `ResnetBlock2D` in `diffusers`) is the layer above made two-dimensional, twice, plus two things
# a denoiser needs:
#
# ```
# x ──┬─ GroupNorm ─ SiLU ─ conv3x3 ─(+ time)─ GroupNorm ─ SiLU ─ dropout ─ conv3x3 ─┐
#     │                                  ▲                                            (+)─> out
#     │                 temb ─ SiLU ─ linear (one shift per channel)                  │
#     └───────────────── identity, or a 1x1 conv when the channel count changes ─────┘
# ```
#
# * **GroupNorm** (Wu & He 2018) normalises groups of channels within each image, so it behaves the
#   same at batch size 1 as at 64 (BatchNorm does not). 32 groups in Stable Diffusion.
# * **SiLU** `x·sigmoid(x)`: a smooth ReLU.
# * **The time embedding** `temb` tells the block how noisy its input is (notebook 03 makes it). A
#   linear layer turns it into one number per channel, added to every pixel of that channel after
#   the first convolution.
# * **Dropout** before the last convolution (0 in Stable Diffusion's inference configs; a training
#   choice).
# * **The shortcut**: when `out_channels != in_channels`, `x` cannot be added as it is, so a 1x1
#   convolution maps it to the new channel count.
#
# In plain sight, with `diffusers`' attribute names so that its weights load without renaming. The
# `skip` switch is only for the experiment after it; Stable Diffusion always adds the skip.

# %%
class ResBlock(nn.Module):
    def __init__(self, in_channels, out_channels, temb_channels, groups=32, eps=1e-5, dropout=0.0, skip=True):
        super().__init__()
        self.skip = skip
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))               # (B, C_in, H, W) -> (B, C_out, H, W)
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]   # (B, T) -> (B, C_out, 1, 1), broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if not self.skip:
            return h
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


block = ResBlock(32, 64, temb_channels=128, groups=8)
for name, p in block.named_parameters():
    print(f"{name:22s} {tuple(p.shape)}")
print(f"{count_parameters(block):,} parameters")

# %% [markdown]
# ### 2.1 The same output as diffusers, on the same weights
# We build `diffusers`' `ResnetBlock2D` with the same sizes, perturb all its weights (so that no
# default value, such as GroupNorm's weight 1 and bias 0, can hide a mistake), load its state dict
# into our block and into `course_lib.models.resnet.ResnetBlock2D`, and compare outputs: with a channel
# change (1x1 shortcut) and without.

# %%
# NBVAL_CHECK_OUTPUT
from diffusers.models.resnet import ResnetBlock2D as DiffusersResnetBlock2D

from course_lib.models.resnet import ResnetBlock2D

for c_in, c_out in ((32, 64), (64, 64)):
    seed_everything(1)
    ref = DiffusersResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=128, groups=8, eps=1e-5,
                                 dropout=0.1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = ResBlock(c_in, c_out, 128, groups=8, dropout=0.1)
    lib = ResnetBlock2D(c_in, c_out, 128, groups=8, dropout=0.1)
    ours.load_state_dict(ref.state_dict())                  # strict: every name and shape must match
    lib.load_state_dict(ref.state_dict())
    for m in (ref, ours, lib):
        m.eval()                                            # dropout off
    x, temb = torch.randn(4, c_in, 16, 16), torch.randn(4, 128)
    with torch.no_grad():
        want, got, got_lib = ref(x, temb), ours(x, temb), lib(x, temb)
    print(f"{c_in:2d} -> {c_out} channels, shortcut {'1x1 conv' if ours.conv_shortcut is not None else 'identity'}: "
          f"output {tuple(got.shape)}, ours == diffusers: {torch.allclose(got, want, atol=1e-6, rtol=0)}, "
          f"course_lib == diffusers: {torch.allclose(got_lib, want, atol=1e-6, rtol=0)}")

# %% [markdown]
# The tests in `tests/test_resnet.py` check the same agreement (to 1e-6) for more sizes, without the
# time embedding (the autoencoder's blocks) and for the gradients. Two more things to see with our
# own eyes:
#
# * **the time embedding matters**: the same image with two different embeddings gives different
#   outputs;
# * **dropout acts only in training mode**: in `train()` mode two calls differ, in `eval()` mode
#   they agree.

# %%
with torch.no_grad():
    change_t = (ours(x, temb) - ours(x, torch.randn(4, 128))).abs().mean() / ours(x, temb).abs().mean()
    ours.train()
    change_dropout = (ours(x, temb) - ours(x, temb)).abs().max()
    ours.eval()
    change_eval = (ours(x, temb) - ours(x, temb)).abs().max()
print(f"another time embedding changes the output by {change_t:.0%} of its size")
print(f"train mode, two calls differ by up to {change_dropout:.2f}; eval mode: {change_eval:.1f}")

# %% [markdown]
# ### 2.2 The skip connection in the real block
# Section 1 used a toy layer. Does the same hold for the block Stable Diffusion uses? Stack 20 of
# them (16 channels, 14x14 feature maps, a random time embedding) and measure the gradient every
# block's first convolution receives at initialisation, with the skip and without it.

# %%
def block_stack_gradients(skip: bool, n_blocks: int = 20) -> torch.Tensor:
    seed_everything(0)
    blocks = nn.ModuleList([ResBlock(16, 16, 64, groups=8, skip=skip) for _ in range(n_blocks)])
    x, temb = torch.randn(16, 16, 14, 14), torch.randn(16, 64)
    h = x
    for b in blocks:
        h = b(h, temb)
    (h ** 2).mean().backward()                              # any scalar of the output will do
    return torch.stack([b.conv1.weight.grad.norm() for b in blocks])


stack = {"with skip": block_stack_gradients(True), "without skip": block_stack_gradients(False)}
fig, ax = plt.subplots(figsize=(6, 3.3))
for (name, g), color in zip(stack.items(), ("C0", "C3")):
    ax.semilogy(np.arange(1, 21), g, "o-", color=color, ms=3, label=name)
ax.set_xlabel("block (1 = next to the input)")
ax.set_ylabel("gradient norm of conv1")
ax.set_title("20 Stable Diffusion residual blocks at initialisation")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("\n".join(f"{name:13s} block 1: {g[0]:.2g}, block 20: {g[-1]:.2g}, ratio {g[0] / g[-1]:.2g}; "
                f"largest / smallest over the 20 blocks {g.max() / g.min():.2g}" for name, g in stack.items()))

# %% [markdown]
# The same pattern as the toy network, milder at 20 blocks: with the skip, every block gets a
# gradient of about the same size; without it, the gradient varies by more than ten times along the
# stack (largest over smallest), largest next to the input, as in the plain GroupNorm network of
# section 1.1.
#
# One more detail of the original code: in `ldm/.../openaimodel.py` the block's last convolution
# is wrapped in `zero_module(...)`: it starts with all weights zero, so at initialisation every
# block is exactly the identity (`x + 0`) and a freshly built U-Net passes its input straight
# through. `diffusers` does not do this (its blocks are mostly loaded from trained weights). The
# residual form is what makes "start as the identity" possible at all.
#
# ### 2.3 GroupNorm needs channels it can split evenly
# GroupNorm divides the channels into equal groups. 48 channels cannot be split into 32 groups;
# `course_lib` says so when the block is built, not later inside a forward pass:

# %%
try:
    ResnetBlock2D(48, 48, temb_channels=128, groups=32)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Summary
# * The same 30 layers train to about 90% test accuracy on MNIST-5k with skip connections and stay
#   at chance (10%) without them. Without normalisation the plain network's gradient vanishes
#   (layer 1 gets about 10^-15 of layer 30's); with GroupNorm it is unbalanced the other way at
#   initialisation and then collapses in the early layers after a few steps. With skips, every
#   layer receives a gradient of similar size throughout training.
# * Three plain layers train fine; ten do not: depth is what breaks plain networks (He et al.'s
#   degradation problem). Skip connections make depth cheap.
# * Stable Diffusion's residual block is GroupNorm, SiLU, conv3x3, plus a per-channel shift from the
#   time embedding, GroupNorm, SiLU, dropout, conv3x3, added to the input (through a 1x1
#   convolution when the channel count changes). Ours and `course_lib.models.resnet.ResnetBlock2D` give
#   the same output as `diffusers`' `ResnetBlock2D` on the same weights.
# * Notebook 03 builds the U-Net from these blocks; notebook 08 builds the autoencoder from them
#   (without the time embedding).
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** How many parameters does `ResnetBlock2D(64, 128, temb_channels=256, groups=32)` have? Count
# them by hand (two GroupNorms, two 3x3 convolutions, the time projection, the 1x1 shortcut, each
# with its bias), then check.

# %%
from course_lib.core.exercises import check

answer_1 = None  # an int
check(answer_1, lambda a: a == count_parameters(ResnetBlock2D(64, 128, temb_channels=256, groups=32)),
      hint="GroupNorm(C) has 2C parameters; Conv2d(a, b, k) has a*b*k*k + b; Linear(a, b) has a*b + b.")

# %% [markdown]
# **2.** Section 1.3 says lower learning rates do not rescue the plain 30-layer network. Test it:
# train `DeepMLP(DeepMLPConfig(depth=30, residual=False))` with `lr=0.01` (same 400 steps, seed 0)
# and answer with its test accuracy, rounded to two decimals.

# %%
def _plain_accuracy_at(lr: float) -> float:
    seed_everything(0)
    net = DeepMLP(DeepMLPConfig(depth=30, residual=False))
    train_classifier(net, train.images, train.labels, steps=400, lr=lr)
    return accuracy(net, test.images, test.labels)


answer_2 = None  # a float, e.g. 0.42
check(answer_2, lambda a: abs(a - _plain_accuracy_at(0.01)) < 0.015,
      hint="seed_everything(0), build the network, train_classifier(..., lr=0.01), then accuracy(...) on test.")

# %% [markdown]
# **3.** Which of these group counts can a GroupNorm over 48 channels use: 32, 16, 12, 10, 5?
# Answer with the list of those that work.

# %%
answer_3 = None  # a list of ints
check(answer_3, lambda a: sorted(a) == [g for g in (32, 16, 12, 10, 5) if 48 % g == 0],
      hint="The group count must divide the channel count.")
