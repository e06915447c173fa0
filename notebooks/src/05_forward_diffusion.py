# %% [markdown]
# # 05 · Forward diffusion: what noising does to an image, step by step
#
# A diffusion model learns to undo one fixed process: adding Gaussian noise to an image a little at
# a time until nothing of the image is left. This notebook builds that *forward process* by hand:
# the noise schedules of DDPM and Stable Diffusion, the closed form that jumps straight to any
# noise level, and the signal-to-noise ratio that every sampler in notebooks 06 and 07 is written in.
#
# **After this notebook you will be able to:**
# - write DDPM's linear, Stable Diffusion's scaled-linear and the cosine noise schedule from their
#   formulas, and check them against `diffusers`;
# - derive `alphas_cumprod`, the signal-to-noise ratio and the log-SNR from the betas, and say what
#   each schedule does differently (and why SD's never reaches pure noise);
# - jump to any timestep with the closed form q(x_t | x_0) and prove, statistically and with a
#   stated tolerance, that it gives the same distribution as running the Markov chain step by step;
# - explore the noising of a digit with a slider over t.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from course_lib.core.utils import seed_everything
from course_lib.worlds.mnist import MNIST5k

seed_everything(0)
digits = MNIST5k("train").images          # (4500, 1, 28, 28), pixel values in [-1, 1]
x0 = digits[7]                            # one digit to noise throughout the notebook
print("one digit:", tuple(x0.shape), f"pixel range [{x0.min():.0f}, {x0.max():.0f}]")

# %% [markdown]
# ## 1. One step of noise
#
# The forward process is a Markov chain. Step `t` (for `t = 0, 1, ..., T-1`, with `T = 1000`)
# shrinks the image a little and adds a little fresh Gaussian noise:
#
# $$x_t = \sqrt{1-\beta_t}\, x_{t-1} + \sqrt{\beta_t}\, \varepsilon_t, \qquad \varepsilon_t \sim \mathcal N(0, I).$$
#
# The shrinking keeps the variance in check: if $x_{t-1}$ has unit variance, so does $x_t$
# ($(1-\beta_t) + \beta_t = 1$). The list of $\beta_t$ is the **noise schedule**. Three schedules matter:
#
# * **linear** (DDPM, Ho et al. 2020): $\beta_t$ evenly spaced from $10^{-4}$ to $0.02$.
# * **scaled linear** (Stable Diffusion; SD's configs call it `linear` with `linear_start 0.00085`,
#   `linear_end 0.012`; diffusers calls it `scaled_linear`): $\sqrt{\beta_t}$ evenly spaced, then squared.
# * **cosine** (Nichol & Dhariwal 2021): defined through the signal it keeps,
#   $\bar\alpha(t) \propto \cos^2\!\big(\tfrac{t/T + s}{1+s}\tfrac{\pi}{2}\big)$ with $s = 0.008$, and
#   $\beta_t = 1 - \bar\alpha(t+1)/\bar\alpha(t)$ capped at 0.999.
#
# Written out by hand:

# %%
T = 1000


def betas_linear(T, beta_start=1e-4, beta_end=0.02):
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def betas_scaled_linear(T, beta_start=0.00085, beta_end=0.012):
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def betas_cosine(T, s=0.008, max_beta=0.999):
    def f(u):  # the signal power the schedule aims for at time u in [0, 1], up to a constant
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)], dtype=torch.float64)


my_betas = {"linear": betas_linear(T), "scaled_linear": betas_scaled_linear(T), "cosine": betas_cosine(T)}

# %% [markdown]
# The same three schedules live in `course_lib.diffusion.schedules` (as `NoiseSchedule` objects that later
# notebooks import). Both must agree with `diffusers`' `DDPMScheduler`, the reference
# implementation, which names the cosine schedule `squaredcos_cap_v2`:

# %%
# NBVAL_CHECK_OUTPUT
from diffusers import DDPMScheduler

from course_lib.diffusion.schedules import make_schedule

schedules = {name: make_schedule(name, T) for name in my_betas}
diffusers_names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
for name, betas in my_betas.items():
    extra = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=diffusers_names[name], **extra)
    torch.testing.assert_close(betas, schedules[name].betas, atol=1e-12, rtol=0)
    torch.testing.assert_close(betas.float(), ref.betas, atol=1e-7, rtol=1e-5)   # diffusers works in float32
    print(f"{name:14s} by hand == course_lib (1e-12) == diffusers (float32)   beta_0={betas[0]:.5f}  "
          f"beta_999={betas[-1]:.4f}")

# %% [markdown]
# ## 2. What survives: alphas_cumprod, SNR and log-SNR
#
# Unroll the chain: every step multiplies the signal by $\sqrt{1-\beta_t}$, so after steps
# $0..t$ the image is scaled by $\sqrt{\bar\alpha_t}$ with
#
# $$\bar\alpha_t = \prod_{s=0}^{t} (1-\beta_s) \quad(\texttt{alphas\_cumprod}),$$
#
# and the noise has variance $1-\bar\alpha_t$. The course writes $\alpha_t = \sqrt{\bar\alpha_t}$
# (signal scale) and $\sigma_t = \sqrt{1-\bar\alpha_t}$ (noise scale). Their ratio of powers is the
# **signal-to-noise ratio** $\mathrm{SNR}(t) = \alpha_t^2/\sigma_t^2$; samplers work with its log,
# $\log \mathrm{SNR}$, or with $\lambda_t = \log(\alpha_t/\sigma_t) = \tfrac12 \log\mathrm{SNR}$
# (DPM-Solver's time variable, notebook 07).

# %%
def alphas_cumprod(betas):
    return torch.cumprod(1 - betas, dim=0)


fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for name, betas in my_betas.items():
    ab = alphas_cumprod(betas)
    axes[0].plot(ab, label=name)
    axes[1].plot(ab / (1 - ab), label=name)
    axes[2].plot(torch.log(ab) - torch.log1p(-ab), label=name)
axes[0].set_title("alphas_cumprod: signal power kept")
axes[1].set_title("SNR = alpha^2 / sigma^2 (log axis)")
axes[1].set_yscale("log")
axes[2].set_title("log-SNR")
axes[2].axhline(0, color="gray", lw=0.8, ls="--")
for ax in axes:
    ax.set_xlabel("timestep t")
    ax.grid(alpha=0.3)
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The numbers behind the curves (hand-made and `course_lib` agree, so we print the library's):

# %%
# NBVAL_CHECK_OUTPUT
for name, betas in my_betas.items():
    torch.testing.assert_close(alphas_cumprod(betas), schedules[name].alphas_cumprod, atol=1e-12, rtol=0)
print(f"{'schedule':14s}" + "".join(f"{'ab[' + str(t) + ']':>10s}" for t in (0, 250, 500, 750, 999))
      + f"{'logSNR[0]':>11s}{'logSNR[999]':>12s}{'SNR=1 at t':>11s}")
for name, s in schedules.items():
    ab, ls = s.alphas_cumprod, s.log_snr
    crossing = int((ls < 0).nonzero()[0])          # first timestep with more noise than signal
    print(f"{name:14s}" + "".join(f"{ab[t]:10.4f}" for t in (0, 250, 500, 750, 999))
          + f"{ls[0]:11.2f}{ls[-1]:12.2f}{crossing:11d}")
print("timesteps (of 1000) at log-SNR below -3, where the image is nearly gone:",
      ", ".join(f"{name} {int((s.log_snr < -3).sum())}" for name, s in schedules.items()))

# %% [markdown]
# What the table says:
#
# * **linear** destroys the signal fast: 453 of its 1000 steps lie at log-SNR below -3, where the
#   image is nearly gone (cosine: 141). Nichol & Dhariwal noticed that for small images many of those
#   steps are wasted, which motivated the **cosine** schedule: its log-SNR falls almost linearly
#   through the middle, so every stretch of timesteps does a similar amount of work.
# * **scaled linear** (SD) ends at $\bar\alpha_{999} \approx 0.0047$: the last timestep still keeps
#   $\sqrt{0.0047} \approx 7\%$ of the signal's amplitude (log-SNR about -5.4, not $-\infty$). Sampling
#   nevertheless starts from pure noise, a small mismatch between training and sampling that Lin et
#   al. (2024, *Common diffusion noise schedules and sample steps are flawed*) measure and fix. SD's
#   schedule was designed for its 4-channel *latents*, not for pixels; for the pixel-space digits
#   of notebooks 06 and 07 we use DDPM's linear schedule.

# %% [markdown]
# ## 3. The closed form q(x_t | x_0)
#
# Because a sum of independent Gaussians is Gaussian, the whole chain collapses into one step:
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, x_0,\; (1-\bar\alpha_t) I\big), \qquad
# x_t = \alpha_t x_0 + \sigma_t \varepsilon .$$
#
# (Induction: if $x_{t-1} = \alpha_{t-1} x_0 + \sigma_{t-1}\varepsilon$, then one more step gives mean
# $\sqrt{1-\beta_t}\,\alpha_{t-1} x_0 = \alpha_t x_0$ and variance
# $(1-\beta_t)(1-\bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$.) This is what makes training cheap:
# a training example at timestep 700 costs one multiplication, not 700 steps.
#
# Both ways, in plain sight:

# %%
def markov_chain(x0, betas, t_stop, generator):
    """Run the forward chain from x0 through steps 0..t_stop; returns x_{t_stop}."""
    x = x0
    for t in range(t_stop + 1):
        x = (1 - betas[t]) ** 0.5 * x + betas[t] ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def closed_form(x0, betas, t, noise):
    ab = torch.cumprod(1 - betas, dim=0)[t]
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise


# %% [markdown]
# The two cannot agree sample by sample (the chain draws 700 noises, the closed form one), only in
# distribution. So we test the distribution: run the chain 500 times from the same digit and
# compare with what the closed form predicts, pixel by pixel.
#
# * **Mean.** The closed form says each pixel's mean is $\alpha_t x_0$. With $n$ chains the sample
#   mean has standard error $\sigma_t/\sqrt n$, so $z = (\bar x - \alpha_t x_0)/(\sigma_t/\sqrt n)$ is
#   standard normal for each of the 784 pixels. **Tolerance:** every $|z| < 4.5$ (a false alarm
#   somewhere among 784 pixels has probability about 0.5%).
# * **Variance.** The sample variance divided by $\sigma_t^2$, averaged over the 784 pixels, should be
#   1 with standard error $\sqrt{2/(n-1)/784} \approx 0.0023$. **Tolerance:** within 0.012 of 1
#   (more than 5 standard errors).
# * **Shape.** The standardized values $(x_t - \alpha_t x_0)/\sigma_t$ of all chains and pixels should
#   be standard normal: we compare their quantiles with the normal's.

# %%
# NBVAL_CHECK_OUTPUT
n_chains = 500
g = torch.Generator().manual_seed(0)
betas = my_betas["linear"]
x0_batch = x0.expand(n_chains, 1, 28, 28)        # float32: the 1000-step loop is the slow part
chains = {}
x = x0_batch
for t in range(T):                                  # one run of the chain, kept at four timesteps
    x = (1 - betas[t].item()) ** 0.5 * x + betas[t].item() ** 0.5 * torch.randn(x.shape, generator=g)
    if t in (9, 99, 499, 999):
        chains[t] = x

print(f"{'t':>4s} {'alpha_t':>8s} {'max |z| of means':>17s} {'variance ratio':>15s}   verdict")
for t, xt in chains.items():
    ab = float(torch.cumprod(1 - betas, 0)[t])
    alpha, sigma = ab**0.5, (1 - ab) ** 0.5
    xt = xt.double()
    z = (xt.mean(0) - alpha * x0.double()) / (sigma / n_chains**0.5)
    var_ratio = float((xt.var(0) / sigma**2).mean())
    ok = z.abs().max() < 4.5 and abs(var_ratio - 1) < 0.012
    print(f"{t + 1:4d} {alpha:8.4f} {z.abs().max():17.2f} {var_ratio:15.4f}   "
          f"{'agrees with the closed form' if ok else 'DISAGREES'}")

# %% [markdown]
# (Timestep `t` here counts steps taken: after 10, 100, 500 and 1000 steps.) Every check passes. The
# quantile plot shows the whole distribution, for the chain and for the closed form:

# %%
t_show = 499
ab = float(torch.cumprod(1 - betas, 0)[t_show])
chain_std = ((chains[t_show].double() - ab**0.5 * x0.double()) / (1 - ab) ** 0.5).flatten()
closed = closed_form(x0_batch.double(), betas, t_show, torch.randn(x0_batch.shape, generator=g, dtype=torch.float64))
closed_std = ((closed - ab**0.5 * x0.double()) / (1 - ab) ** 0.5).flatten()
q = torch.linspace(0.001, 0.999, 199, dtype=torch.float64)
normal_q = torch.distributions.Normal(0.0, 1.0).icdf(q)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(normal_q, torch.quantile(chain_std, q), ".", ms=3, label="Markov chain, 500 steps")
axes[0].plot(normal_q, torch.quantile(closed_std, q), "x", ms=3, label="closed form, one step")
axes[0].plot([-3.2, 3.2], [-3.2, 3.2], "k--", lw=0.8)
axes[0].set_xlabel("standard normal quantile")
axes[0].set_ylabel("observed quantile")
axes[0].set_title("(x_t - alpha x0) / sigma: both are N(0, 1)")
axes[0].legend()
axes[1].imshow(chains[99][:6].squeeze(1).permute(1, 0, 2).reshape(28, -1), cmap="gray")  # (6,28,28) -> (28,168)
axes[1].set_title("six chains after 100 steps: same x0, different noise", fontsize=9)
axes[1].set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# `course_lib.diffusion.forward` keeps both: `q_step` (one step of the chain) and `q_sample` (the closed
# form). Given the same noise they reproduce our hand-written versions exactly:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.diffusion.forward import q_sample, q_step

lin = schedules["linear"]
noise = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
ref = closed_form(x0.double(), betas, 300, noise)
print("q_sample == closed form:", torch.allclose(q_sample(x0.double().expand(4, -1, -1, -1), 300, noise, lin), ref,
                                                atol=1e-12))
x_hand = markov_chain(x0.double().expand(4, -1, -1, -1), betas, 49, torch.Generator().manual_seed(5))
x_lib, g_lib = x0.double().expand(4, -1, -1, -1), torch.Generator().manual_seed(5)   # the same noise stream
for t in range(50):
    x_lib = q_step(x_lib, t, torch.randn(x_lib.shape, generator=g_lib, dtype=torch.float64), lin)
print("q_step, 50 steps == markov_chain by hand:", torch.allclose(x_lib, x_hand, atol=1e-12))
# a different timestep per image, as in a training batch: t is a (B,) tensor
t_batch = torch.tensor([0, 10, 500, 999])
print("per-image timesteps:", [f"{v:.3f}" for v in q_sample(torch.ones(4, 1), t_batch, torch.zeros(4, 1), lin)
                               .flatten().tolist()], "= alpha_t")

# %% [markdown]
# ## 4. Watching a digit dissolve
#
# The same digit and the same noise $\varepsilon$, at increasing timesteps, under each schedule. The
# linear schedule has all but erased the digit by t = 400; the cosine one still shows it at t = 600.

# %%
from course_lib.core.plotting import show_images

ts = [0, 50, 100, 200, 300, 400, 600, 800, 999]
eps = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
fig, axes = plt.subplots(3, 1, figsize=(9, 4.6))
for ax, (name, s) in zip(axes, schedules.items()):
    row = torch.cat([q_sample(x0[None], t, eps, s) for t in ts])
    show_images(row, nrow=len(ts), ax=ax, value_range=(-2, 2))
    ax.set_title(f"{name}: t = " + ", ".join(map(str, ts)), fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Explore it yourself
# Drag the slider to pick a timestep and choose a schedule. The picture shows $x_t$, the histogram
# shows its pixel values against the density the closed form predicts for them: a mixture of one
# Gaussian per pixel, centred at $\alpha_t x_0$ with standard deviation $\sigma_t$ (one bump for the
# background at $-\alpha_t$, one for the ink near $+\alpha_t$, which merge as $\sigma_t$ grows).
# The drawing is done by `noising_panel`, an ordinary function, so the cell after the widget can
# call it too (and the notebook runs without a browser).

# %%
def noising_panel(t, schedule_name, x0=x0, noise=eps):
    """Draw x_t for one timestep and schedule; return (alpha_t, sigma_t, SNR) for the caption."""
    s = schedules[schedule_name]
    alpha, sigma = (float(v) for v in s.alpha_sigma(t))
    xt = q_sample(x0[None], t, noise, s)
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.6), gridspec_kw={"width_ratios": [1, 1.6]})
    show_images(xt, nrow=1, ax=axes[0], value_range=(-2, 2))
    axes[0].set_title(f"{schedule_name}, t = {t}", fontsize=9)
    axes[1].hist(xt.flatten().numpy(), bins=40, range=(-4, 4), density=True, color="#8aa", label="pixels of x_t")
    grid = np.linspace(-4, 4, 200)[:, None]
    means = alpha * x0.flatten().numpy()[None, :]                       # (1, 784): one Gaussian per pixel
    density = (np.exp(-0.5 * ((grid - means) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))).mean(1)
    axes[1].plot(grid[:, 0], density, "k-", lw=1, label="closed form")
    axes[1].legend(fontsize=8, loc="upper right")
    axes[1].set_title(f"alpha_t = {alpha:.3f}, sigma_t = {sigma:.3f}, SNR = {alpha**2 / sigma**2:.3g}", fontsize=9)
    axes[1].set_yticks([])
    plt.tight_layout()
    plt.show()
    return alpha, sigma, alpha**2 / sigma**2


# %%
# TAGS: nbval-ignore-output
import ipywidgets as widgets
from IPython.display import display


def make_noise_explorer(panel=noising_panel):
    """A timestep slider and a schedule menu; every change redraws `panel(t, schedule_name)`."""
    slider = widgets.IntSlider(value=200, min=0, max=T - 1, step=1, description="t", continuous_update=False)
    menu = widgets.Dropdown(options=["linear", "scaled_linear", "cosine"], value="linear", description="schedule")
    out = widgets.Output()

    def redraw(_change=None):
        out.clear_output(wait=True)
        with out:
            panel(slider.value, menu.value)

    slider.observe(redraw, names="value")
    menu.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([slider, menu]), out]), slider, menu


explorer, slider, menu = make_noise_explorer()
display(explorer)

# %% [markdown]
# Without a browser, the same function at three timesteps:

# %%
# NBVAL_CHECK_OUTPUT
for t in (100, 300, 600):
    alpha, sigma, snr = noising_panel(t, "cosine")
    print(f"cosine, t={t}: alpha_t={alpha:.3f}, sigma_t={sigma:.3f}, SNR={snr:.3g}")

# %% [markdown]
# ## Summary
# * The forward process adds noise in $T = 1000$ small steps, $x_t = \sqrt{1-\beta_t}\,x_{t-1} +
#   \sqrt{\beta_t}\,\varepsilon$; the list of $\beta_t$ is the noise schedule. DDPM's linear, SD's
#   scaled-linear and the cosine schedule, written by hand, equal `course_lib.diffusion.schedules` and
#   `diffusers`' `DDPMScheduler`.
# * Everything follows from $\bar\alpha_t = \prod(1-\beta_s)$: the signal scale
#   $\alpha_t = \sqrt{\bar\alpha_t}$, the noise scale $\sigma_t = \sqrt{1-\bar\alpha_t}$, the SNR and the
#   log-SNR. The cosine schedule spends its steps evenly in log-SNR; SD's schedule stops at
#   $\bar\alpha \approx 0.0047$, short of pure noise.
# * The closed form $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ has the distribution of the whole
#   Markov chain: measured on 500 chains, every pixel's mean within 4.5 standard errors and the
#   variance within 0.012 of the prediction, at 10 to 1000 steps. `q_sample` and `q_step` are the
#   library's versions; notebook 06 trains a network on `q_sample` and learns to run the chain
#   backwards.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** How much of the signal's *amplitude* ($\alpha_t$) does DDPM's linear schedule keep at
# t = 500? Compute it from the betas (one line with `torch.cumprod`), not from the table.

# %%
from course_lib.core.exercises import check

answer_1 = None  # a float
check(answer_1, lambda a: abs(a - float(schedules["linear"].alphas_cumprod[500]) ** 0.5) < 1e-4,
      hint="alpha_t is the square root of alphas_cumprod[t] = prod(1 - betas[:t+1]).")

# %% [markdown]
# **2.** If you start the chain from a black image ($x_0 = -1$ everywhere), what is the variance of a
# pixel of $x_t$ at t = 999 under SD's scaled-linear schedule? And its mean? Give `(mean, variance)`.

# %%
answer_2 = None  # a tuple (mean, variance)
check(answer_2, lambda a: abs(a[0] + float(schedules["scaled_linear"].alphas_cumprod[999]) ** 0.5) < 1e-3
      and abs(a[1] - (1 - float(schedules["scaled_linear"].alphas_cumprod[999]))) < 1e-3,
      hint="q(x_t | x_0) = N(alpha_t x_0, sigma_t^2): mean alpha_t * (-1), variance 1 - alphas_cumprod[999].")

# %% [markdown]
# **3.** Build your own schedule: betas that make the log-SNR fall in a *straight line* from +10 at
# t = 0 to -10 at t = 999. (Hint: choose `alphas_cumprod` first, as the cosine schedule does, then
# `betas[t] = 1 - ab[t] / ab[t-1]`.) Check it with `NoiseSchedule(betas).log_snr`.

# %%
from course_lib.diffusion.schedules import NoiseSchedule

answer_3 = None  # a (1000,) float64 tensor of betas
check(answer_3, lambda a: torch.allclose(NoiseSchedule(a).log_snr, torch.linspace(10, -10, T, dtype=torch.float64),
                                         atol=1e-6),
      hint="log-SNR = log(ab / (1 - ab)), so ab = sigmoid(log-SNR); betas[0] = 1 - ab[0].")
