# %% [markdown]
# # 00 · Welcome: what Stable Diffusion really is
#
# This course builds Stable Diffusion from scratch, one part per notebook, and keeps each finished
# part in a small library, `course_lib`, that the last notebook assembles into a text-to-image
# sampler. Every claim is measured, every model is trained by the course's own code, and every
# notebook runs on two CPU cores without a GPU (section 6 lists how long each one takes).
#
# **After this notebook you will be able to:**
# - draw Stable Diffusion's pipeline and name its three networks and its sampler;
# - say what a popular article about Stable Diffusion gets wrong, and point to the source that says so;
# - generate the course's three data worlds (toy 2-D mixtures, real MNIST digits, the captioned
#   ShapeWorld) and know which colour-shape pairs are held out to test composition;
# - use the course's judges: Frechet distance, KID and precision/recall on a classifier's
#   features, and GenEval-style prompt adherence, and know how good the judges themselves are;
# - run the course locally, on Colab, and as slides.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from course_lib.core.utils import get_device, seed_everything

seed_everything(0)
device = get_device()
print("torch", torch.__version__, "| device:", device)

# %% [markdown]
# ## 1. The pipeline
#
# Stable Diffusion is a **latent diffusion model** (Rombach et al. 2022, *High-Resolution Image
# Synthesis with Latent Diffusion Models*). Three networks and one algorithm:
#
# 1. a **tokenizer and text encoder** (CLIP's, a *causal* transformer) turn the prompt into 77
#    vectors;
# 2. a **denoising U-Net** predicts the noise in a latent image, steered by the text through
#    **cross-attention**;
# 3. a **sampler** (DDPM, DDIM, PLMS, DPM-Solver) starts from pure Gaussian noise and calls the
#    U-Net 20 to 50 times, each call removing some noise; **classifier-free guidance** pushes each
#    step towards the prompt;
# 4. the **decoder of a KL autoencoder** turns the final 64x64x4 latent into a 512x512x3 image.
#
# Each box below names the notebook that builds it.

# %%
def draw_pipeline():
    boxes = [  # (label, x position)
        ("prompt", 0.0), ("tokenizer\n[04]", 1.45), ("text encoder\n(causal transformer)\n[04]", 3.1),
        ("U-Net with\ncross-attention\n[02, 03, 09]", 4.95), ("sampler: DDPM, DDIM,\nPLMS, DPM-Solver\n[05-07]", 6.9),
        ("VAE decoder\n[08]", 8.7), ("image", 9.95),
    ]
    fig, ax = plt.subplots(figsize=(12, 2.8))
    for label, x in boxes:
        plain = label in ("prompt", "image")
        ax.text(x, 0.5, label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="#f5f5f5" if plain else "#e8f0fe", ec="#555"))
    gaps = [0.45, 0.6, 0.85, 0.8, 0.85, 0.65, 0.45]  # half-widths of the boxes, for the arrows
    for i in range(len(boxes) - 1):
        ax.annotate("", xy=(boxes[i + 1][1] - gaps[i + 1], 0.5), xytext=(boxes[i][1] + gaps[i], 0.5),
                    arrowprops=dict(arrowstyle="->"))
    ax.annotate("", xy=(5.6, 0.8), xytext=(6.3, 0.8), arrowprops=dict(arrowstyle="->", connectionstyle="arc3,rad=0.5"))
    ax.text(5.95, 0.97, "20-50 denoising steps", ha="center", fontsize=8)
    ax.text(5.0, 0.04, "starts from Gaussian noise in latent space; classifier-free guidance mixes conditional "
            "and unconditional predictions [09]; everything together: [10]; public weights: [11]",
            ha="center", fontsize=8, style="italic")
    ax.set_xlim(-0.5, 10.5)
    ax.set_ylim(0, 1.05)
    ax.set_axis_off()
    plt.show()


draw_pipeline()

# %% [markdown]
# ## 2. What the popular article gets wrong
#
# The course was seeded by a popular article about Stable Diffusion. Several of its claims are
# wrong; here is each one beside the truth and its source. Later notebooks show the truth by
# experiment where an experiment can.
#
# | the article says | what is true | source | shown in |
# |---|---|---|---|
# | Stable Diffusion is a GAN, with a generator and a discriminator | It is a latent diffusion model: a KL autoencoder, a denoising U-Net and a frozen text encoder. No discriminator takes part in sampling; one is used only while training the autoencoder, as a perceptual/adversarial loss | Rombach et al. 2022 | 01, 08, 10 |
# | CLIP is bidirectional training of transformers, like BERT | CLIP's text encoder is a *causal* (masked) transformer, trained *contrastively* on image-text pairs | Radford et al. 2021 | 04 |
# | `plms.py` implements "PPLM" (PPLMController, PPLMSampler, train_model...) | `ldm/models/diffusion/plms.py` holds `PLMSSampler`: pseudo linear multistep sampling from the PNDM paper; no training, no language-model control | Liu et al. 2022 (PNDM); Stability-AI/stablediffusion | 07 |
# | DPM-Solver uses several diffusion models, and its class manages training | DPM-Solver is a training-free fast ODE solver for *one* diffusion model; SD's `DPMSolverSampler` runs DPM-Solver++(2M) | Lu et al. 2022a, 2022b | 07 |
# | The model compares the image with the prompt at every step and regenerates it | The U-Net predicts noise conditioned on the text through cross-attention; classifier-free guidance mixes conditional and unconditional predictions | Ho & Salimans 2022 | 09 |
# | FP32 is IEEE double precision; the bf16 config describes ReLU, Leaky ReLU, Sigmoid and regularization | FP32 is *single* precision (32 bits); bf16 keeps fp32's 8-bit exponent with a 7-bit mantissa. The config's U-Net uses SiLU/GELU, and an inference config holds no loss or regularization | IEEE 754; `v2-inference-bf16.yaml` | below; 10 |
# | U-Net is a "fully connected" convolutional network | It is a *fully convolutional* network | Ronneberger et al. 2015 | 03 |
# | Stable Diffusion was developed by Stability.ai | It was developed by the CompVis group (LMU Munich) with Runway, on compute from Stability AI and data from LAION; Stability AI released SD 2.x | the SD model cards; Rombach et al. 2022 | |
# | Sampling: "using a set of numbers (noise), the model starts generating"; the autoencoder "preserves detail" | Partly right: sampling starts from Gaussian noise in the autoencoder's latent space, and the decoder turns the final latent into pixels; the autoencoder trades a little detail for a 48x smaller space to diffuse in | Rombach et al. 2022 | 08 |
#
# One claim we can settle right here: what FP32 and bf16 are. torch reports each format's bits.

# %%
# NBVAL_CHECK_OUTPUT
for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
    info = torch.finfo(dtype)
    mantissa = int(round(-np.log2(info.eps)))  # eps = 2^-mantissa_bits
    print(f"{str(dtype):15s} {info.bits:2d} bits, {mantissa:2d} mantissa bits, largest {info.max:.3g}")

# %% [markdown]
# FP32 is 32 bits, not double precision. bf16 has fp32's range (largest value about 3.4e38, because it
# keeps the 8-bit exponent) but only 7 mantissa bits, which is why it suits inference: activations
# rarely overflow, and the lost precision barely changes an image (notebook 10 measures by how much).
#
# ## 3. The worlds the models learn
#
# Nothing in this course downloads data. The models learn three worlds, each chosen for what it
# lets us measure.
#
# ### 3.1 Toy 2-D mixtures: the mode-collapse benchmark
# The ring of 8 and the grid of 25 Gaussians (Metz et al. 2017; Srivastava et al. 2017). A sample
# is *high quality* when it lies within 3 standard deviations of a mode; a mode is *covered* when
# enough high-quality samples land on it. Notebook 01 uses them to show GANs dropping modes.

# %%
from course_lib.core.plotting import plot_points_2d
from course_lib.worlds.toy2d import grid_of_gaussians, ring_of_gaussians, score_modes

g = torch.Generator().manual_seed(0)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
ring, grid = ring_of_gaussians(), grid_of_gaussians()
plot_points_2d(ring.sample(2000, g), ring.means, axes[0], "ring of 8", lim=3)
plot_points_2d(grid.sample(2000, g), grid.means, axes[1], "grid of 25", lim=5.5)
collapsed = ring.means[:3].repeat(300, 1) + 0.02 * torch.randn(900, 2, generator=g)
plot_points_2d(collapsed, ring.means, axes[2], "a 'collapsed' sampler", lim=3)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("true samples, ring:  ", score_modes(ring.sample(2500, g), ring))
print("true samples, grid:  ", score_modes(grid.sample(2500, g), grid))
print("collapsed sampler:   ", score_modes(collapsed, ring))

# %% [markdown]
# ### 3.2 MNIST-5k: real handwritten digits
# 5,000 real MNIST digits, 500 per class, shipped in `data/` with their license
# (CC BY-SA 3.0, LeCun, Cortes and Burges). `MNIST5k("train")` holds 4,500, `"test"` the other 500,
# 50 of each digit. Images are scaled to [-1, 1], the range diffusion models work in.

# %%
from course_lib.core.plotting import show_images
from course_lib.worlds.mnist import MNIST5k

digits = MNIST5k("train")
order = torch.argsort(digits.labels[:400], stable=True)[::4][:80]
show_images(digits.images[:400][order], nrow=20, title="MNIST-5k, sorted by label")
plt.show()
print(len(digits), "training digits,", len(MNIST5k("test")), "test digits")

# %% [markdown]
# ### 3.3 ShapeWorld: captioned images whose truth we know
# A procedural world of coloured shapes, each image with a caption from a small grammar and a
# segmentation mask. Three kinds of scene: a single object ("a small red circle in the top left"),
# two objects in a spatial relation ("a red circle above a blue square") and counts ("three green
# triangles"). Because the world is generated, every caption's truth is known, so later notebooks
# can measure exactly whether a generated image obeys its prompt.

# %%
from course_lib.core.plotting import show_captioned
from course_lib.worlds import shapeworld as sw

world = sw.ShapeWorld()
batch = world.sample(12, seed=0)
show_captioned(batch.tensors(), batch.captions, ncols=6, width=1.9)
plt.show()

# %% [markdown]
# Every image comes with its masks: which object each pixel belongs to, and so its shape and colour.

# %%
from matplotlib.colors import ListedColormap

shape_mask, color_mask = batch.semantic_masks()
palette = ListedColormap(np.array([(40, 40, 40), *sw.COLORS.values()]) / 255)  # class 0 = background
fig, axes = plt.subplots(3, 6, figsize=(9, 4.8))
for i in range(6):
    axes[0, i].imshow(batch.images[i])
    axes[1, i].imshow(shape_mask[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[2, i].imshow(color_mask[i], cmap=palette, vmin=0, vmax=len(sw.COLORS), interpolation="nearest")
for ax, name in zip(axes[:, 0], ["image", "shape class", "colour class"]):
    ax.set_ylabel(name)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("shape classes: " + ", ".join(f"{k + 1} {s}" for k, s in enumerate(sw.SHAPES)) + " (0 background)",
             fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Held-out combinations.** Four colour-shape pairs never appear in `split="train"`. A model that
# draws "a green circle" after training only on green squares and red circles has *composed* what
# it learned; notebooks 04, 09 and 10 measure whether theirs do. `split="heldout"` makes every
# scene contain at least one of these pairs.

# %%
# NBVAL_CHECK_OUTPUT
print("held out of training:", ", ".join(f"{c} {s}" for c, s in sw.HELD_OUT_PAIRS))
train = world.sample(20000, seed=0, split="train")
print("held-out pairs among 20,000 training captions:", sum(sw.parse_caption(c).held_out for c in train.captions))
kinds = np.bincount(train.kinds, minlength=3) / len(train)
print("scene kinds:", ", ".join(f"{k} {v:.0%}" for k, v in zip(sw.KINDS, kinds)))

# %%
held = world.render_caption("a green circle above a blue triangle", n=6, seed=1)
show_images(held.tensors(), nrow=6, title="a held-out caption, rendered: 'a green circle above a blue triangle'")
plt.show()

# %% [markdown]
# The world renders tens of thousands of images per second on two cores, so no notebook ever waits
# for data. Asking it for something it does not have is a clear error that lists what it has:

# %%
import time

start = time.perf_counter()
world.sample(20000, seed=1)
print(f"{20000 / (time.perf_counter() - start):,.0f} images per second")
try:
    world.render_caption("a pink star above a blue square")
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## 4. The judges
#
# "The samples look good" is not a measurement. Every later notebook measures its models with the
# same judges, built here, and the judges' own quality is measured first.
#
# * **Features.** A digit classifier (MNIST-5k) and a ShapeWorld attribute network, trained by
#   `scripts/train_digit_classifier.py` and `scripts/train_attribute_net.py` and shipped in
#   `data/` with a checksum in `data/manifest.json`, beside every other model the course ships
#   (the first cell below lists them all, with the command that made each).
# * **Distribution distances on those features:** the Frechet distance (FID's method, Heusel et al.
#   2017), KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi et al. 2019). Said
#   plainly: our Frechet distance uses *our* classifiers' features, not Inception's, so its numbers
#   rank models on the same world and are not comparable with published FIDs. Each is reported
#   beside its **floor**, the same measure between two independent sets of real images.
# * **Prompt adherence** in GenEval's categories (Ghosh et al. 2023): the attribute network labels
#   every pixel with a shape and colour; its connected regions are the objects it sees; each
#   caption's claims are checked against them.

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.core.checkpoints import read_manifest
from course_lib.evaluate.classifiers import load_attribute_net, load_digit_classifier

manifest = read_manifest()
print(f"data/manifest.json: {len(manifest)} shipped checkpoints")
for name, entry in manifest.items():
    print(f"{name}: {entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}..., made by `{entry['command']}`")

# %%
# NBVAL_CHECK_OUTPUT
test_digits = MNIST5k("test")
with torch.no_grad():
    digit_acc = (load_digit_classifier()(test_digits.images).argmax(1) == test_digits.labels).float().mean()
print(f"digit classifier accuracy on 500 held-back digits: {digit_acc:.3f}")

check = world.sample(1000, seed=4321, split="all")
shape_true, color_true = (torch.from_numpy(m).long() for m in check.semantic_masks())
with torch.no_grad():
    shape_logits, color_logits = load_attribute_net()(check.tensors())
fg = shape_true > 0
print(f"attribute net, foreground pixels of fresh images: shape {(shape_logits.argmax(1)[fg] == shape_true[fg]).float().mean():.3f}, "
      f"colour {(color_logits.argmax(1)[fg] == color_true[fg]).float().mean():.3f}")

# %% [markdown]
# ### Frechet distance, KID and precision/recall, with their floors
# Every row is a set of 500 images measured against 2,000 real training digits. The **floor**
# column is what 500 *other* real training digits score: two independent sets of real digits, the
# best any generator can do. The first row is a second real set, the 500 held-back test digits;
# it does not score the floor exactly, and the gap between the two shows how much the measure
# moves between real sets (KID, an unbiased estimate, can even fall just below zero). Random noise
# and a single repeated digit (a perfectly "mode-collapsed" generator) show what the measures do
# with bad samples: collapse keeps precision high but kills recall.

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.evaluate.classifiers import digit_features
from course_lib.evaluate.metrics import compare_sets

real_a = digit_features(digits.images[:2000])
real_b = digit_features(digits.images[2000:2500])
candidates = {
    "real test digits": digit_features(test_digits.images),
    "uniform noise": digit_features(torch.rand(500, 1, 28, 28) * 2 - 1),
    "one digit repeated": digit_features(test_digits.images[:1].repeat(500, 1, 1, 1)),
    "only 0s and 1s": digit_features(digits.images[digits.labels < 2][:500]),
}
print(f"{'generated set':26s} {'Frechet':>8s} {'floor':>6s} {'KID':>7s} {'precision':>9s} {'recall':>6s}")
for name, feats in candidates.items():
    r = compare_sets(real_a, feats, real_b)
    print(f"{name:26s} {r.frechet:8.1f} {r.frechet_floor:6.1f} {r.kid:7.3f} {r.precision:9.2f} {r.recall:6.2f}")

# %% [markdown]
# ### Prompt adherence, and how far to trust it
# A judge we cannot trust is worse than none. Real ShapeWorld images scored against their *own*
# captions should come out near 1, and against *shuffled* captions near 0 (only a caption that
# happens to be true of another image can pass). The attribute network was trained with tinted,
# noisy backgrounds so that imperfect generated images do not fool it; the last row checks that.

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.evaluate.adherence import score_adherence

rows = {}
for split in ("train", "heldout"):
    b = world.sample(1000, seed=99, split=split)
    x = b.tensors()
    rows[f"{split}: own captions"] = score_adherence(x, b.captions)
    rows[f"{split}: shuffled captions"] = score_adherence(x, list(np.random.default_rng(0).permutation(b.captions)))
b = world.sample(1000, seed=98)
noisy = (b.tensors() + 0.15 * torch.rand(1000, 3, 1, 1, generator=g) + 0.08 * torch.randn(1000, 3, 32, 32, generator=g))
rows["train: own captions, tinted + noisy"] = score_adherence(noisy.clamp(-1, 1), b.captions)
cats = list(next(iter(rows.values())).per_category)
print(f"{'':38s}" + "".join(f"{c[:13]:>14s}" for c in cats) + f"{'overall':>9s}{'exact':>7s}")
for name, rep in rows.items():
    print(f"{name:38s}" + "".join(f"{rep.per_category[c]:14.3f}" for c in cats) + f"{rep.overall:9.3f}{rep.exact:7.3f}")

# %% [markdown]
# ## 5. Foundations you will use everywhere
#
# * `get_device()` picks CUDA, then Apple MPS, then the CPU; `get_device("cpu")` or the environment
#   variable `COURSE_DEVICE=cpu` overrides it.
# * `seed_everything(seed)` seeds Python, NumPy and torch at once: every output in this course is
#   reproducible.
# * `progress(iterable)` is a `tqdm.auto` progress bar (a widget in Jupyter).
# * `save_checkpoint` / `load_checkpoint` store weights as **safetensors** with a JSON config and a
#   sha256 in `data/manifest.json`. Loading checks the checksum and that every tensor fits the
#   model, and says what is wrong when it does not. Nothing in the course unpickles a file.

# %%
import tempfile

from course_lib.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from course_lib.evaluate.classifiers import DigitClassifier

with tempfile.TemporaryDirectory() as folder:
    save_checkpoint(DigitClassifier(width=8), "my_classifier", config={"width": 8}, folder=folder,
                    command="notebook 00, section 5")
    print("reloaded:", type(load_checkpoint("my_classifier", DigitClassifier, folder=folder)).__name__)
    try:
        load_checkpoint("my_classifier", DigitClassifier(width=16), folder=folder)
    except CheckpointError as e:
        print("CheckpointError:", e)

# %% [markdown]
# ## 6. Running the course
#
# * **Locally** (Python 3.10+ is all you need): `python3 course.py lab` creates `.venv/`, installs
#   the pinned packages and opens this notebook in JupyterLab; `python3 course.py test` runs the
#   whole test suite, every notebook included. Conda users: `conda env create -f environment.yml`.
# * **On Google Colab:** click the badge at the top of any notebook. Its first code cell fetches the
#   course and installs only what Colab lacks; everywhere else that cell does nothing.
# * **As slides:** `python3 course.py slides 00` writes `slides/00_welcome.slides.html`, a reveal.js
#   deck that opens from disk and works without internet (add `--serve` to open it in a browser).
# * **How long each notebook takes.** A notebook records when each of its cells started and
#   finished. The next cell reads those records and prints how long every notebook took when it was
#   last run, and when that was. For the notebooks as shipped, that run is the course's build
#   (`python3 course.py build`: two CPU cores shared with other work, one torch thread, no GPU);
#   after you run a notebook yourself, it is your run (this notebook's own line is always its
#   previous run).

# %%
import json
from datetime import datetime
from pathlib import Path


def recorded_run(path: Path) -> tuple[float, str] | None:
    """(seconds from the first cell's start to the last cell's end, date) as recorded in a notebook."""
    stamps = []
    for cell in json.loads(path.read_text())["cells"]:
        times = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in times and "shell.execute_reply" in times:
            stamps += [datetime.fromisoformat(times[key].replace("Z", "+00:00"))
                       for key in ("iopub.execute_input", "shell.execute_reply")]
    return ((max(stamps) - min(stamps)).total_seconds(), f"{min(stamps):%Y-%m-%d}") if stamps else None


folder = next((f for f in (Path("."), Path("notebooks")) if list(f.glob("[0-9][0-9]_*.ipynb"))), Path("."))
print(f"{'notebook':32s} {'last run took':>13s}   {'on':10s}")
for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
    run = recorded_run(path)
    took = "{:3d} min {:2d} s".format(*divmod(round(run[0]), 60)) if run else "not recorded"
    print(f"{path.name:32s} {took:>13s}   {run[1] if run else ''}")

# %% [markdown]
# ## Summary
# * Stable Diffusion is a latent diffusion model: a text encoder, a denoising U-Net with
#   cross-attention, a sampler, and an autoencoder's decoder. It is not a GAN, CLIP is not
#   bidirectional, and `plms.py` has nothing to do with "PPLM".
# * The course's models learn three generated or shipped worlds: toy 2-D mixtures, real MNIST
#   digits, and the captioned ShapeWorld with four held-out colour-shape pairs.
# * They are judged by classifiers trained here: the Frechet distance and KID (with their
#   real-versus-real floors) and precision/recall on the classifiers' features, and GenEval-style
#   prompt adherence, which scores real images near 1 with their own captions and near 0 with
#   shuffled ones.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** Write the ShapeWorld caption for an image with two objects: a yellow triangle to the right
# of a white cross.

# %%
from course_lib.core.exercises import check

answer_1 = None  # a caption string
check(answer_1, lambda a: sw.parse_caption(a) == sw.parse_caption("a yellow triangle to the right of a white cross"),
      hint="Pair captions read 'a COLOUR SHAPE RELATION a COLOUR SHAPE'.")

# %% [markdown]
# **2.** Build a sampler of the ring of 8 that covers exactly 5 modes with only high-quality
# samples (hint: `ring.means` and a little noise). How does `score_modes` see it?

# %%
answer_2 = None  # a (N, 2) tensor of samples
check(answer_2, lambda a: (s := score_modes(a, ring)).modes_covered == 5 and s.high_quality > 0.95,
      hint="Repeat 5 of the 8 means many times and add noise much smaller than ring.std * 3.")

# %% [markdown]
# **3.** Which is further from real digits by the Frechet distance: only 0s and 1s, or uniform
# noise? Answer `"noise"` or `"zeros and ones"`, then compute both to see why.

# %%
answer_3 = None
check(answer_3, lambda a: a == ("noise" if compare_sets(real_a, candidates["uniform noise"], real_b).frechet
                                > compare_sets(real_a, candidates["only 0s and 1s"], real_b).frechet
                                else "zeros and ones"),
      hint="Look at the table in section 4.")
