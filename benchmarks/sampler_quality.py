"""Sample quality against the number of model calls, for every sampler, on the shipped MNIST model.

    python benchmarks/sampler_quality.py --workers 2 --threads 1   # writes benchmarks/results/sampler_quality.json
    python benchmarks/sampler_quality.py --n 200 --calls 5 10 --no-ddpm-1000 --out /tmp/q.json   # a quick look
    python benchmarks/sampler_quality.py --checkpoint try1 --folder /tmp/ckpt --calls 20 \
        --samplers "DPM-Solver++(2M)" --no-ddpm-1000 --out /tmp/try1.json        # a model trained elsewhere

For each sampler and each budget of model calls (5, 10, 20, 50, 100), and for 1000-step DDPM, it
draws ``--n`` digits from the shipped checkpoint ``data/mnist_unet`` (the same starting noise for
every sampler, from a fixed seed) and measures them against real digits with the course's judges
(notebook 00): the Frechet distance and KID on the digit classifier's features, plus precision and
recall. The reference is the 4,500 training digits; the *floor* is as many held-back test digits
(up to 500) measured the same way (the best a generator can score at this sample size). The
committed results use the default, 250 digits per point: 21 minutes of two CPU cores with
``--workers 2 --threads 1`` (1000-step DDPM alone is 1000 U-Net calls of about 1 s each).
Besides the samplers of notebook 07, two DDIM variants locate the deterministic samplers' gap
(notebook 07, section 7): ``DDIM (eta=1)`` (the same steps with fresh noise at each) and
``DDIM (clip x0)`` (the x0 prediction clamped to [-1, 1]).
The earlier digit models' rows are in ``results/sampler_quality_mnist_unet_short.json`` and
``results/sampler_quality_mnist_unet_2311.json`` (``--checkpoint``, with the commands inside).

PLMS spends N + 1 calls on N steps, so its budget B runs N = B - 1 steps; every other sampler
spends one call per step. Each row records the calls the sampler really made (``model_calls``).
Results are written after every row; ``--resume`` skips rows already in the output file.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.diffusion.samplers import sample  # noqa: E402
from course_lib.evaluate.classifiers import digit_features  # noqa: E402
from course_lib.evaluate.metrics import compare_sets  # noqa: E402
from course_lib.train.diffusion import load_diffusion_checkpoint  # noqa: E402
from course_lib.worlds.mnist import MNIST5k  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# label -> (sampler name, options, extra calls beyond the number of steps)
SAMPLERS = {
    "DDPM": ("ddpm", {}, 0),
    "DDIM": ("ddim", {}, 0),
    "DDIM (eta=1)": ("ddim", {"eta": 1.0}, 0),      # the same steps with DDPM's fresh noise: stochastic
    "DDIM (clip x0)": ("ddim", {"clip_sample": True}, 0),  # x0 prediction clamped to [-1, 1] (diffusers' default)
    "PLMS": ("plms", {}, 1),
    "DPM-Solver-3 (singlestep)": ("dpm-solver", {"order": 3, "method": "singlestep"}, 0),
    "DPM-Solver++(2M)": ("dpm-solver++", {"order": 2}, 0),
    "DPM-Solver++(3M)": ("dpm-solver++", {"order": 3}, 0),
}


_WORKER: dict = {}


def _init_worker(checkpoint: str, threads: int, folder: str | None = None) -> None:
    torch.set_num_threads(threads)
    _WORKER["ckpt"] = load_diffusion_checkpoint(checkpoint, folder)


def run_job(label: str, budget: int, n: int, seed: int, batch_size: int) -> tuple[str, int, torch.Tensor, int, float]:
    """One point of the curve: (label, budget, samples, model calls, seconds). Runs in a worker."""
    ckpt = _WORKER["ckpt"]
    name, options, extra = SAMPLERS[label]
    start = time.time()
    x, calls = generate(ckpt.model, ckpt.schedule, ckpt.prediction_type, n, name, budget - extra, options, seed,
                        batch_size)
    return label, budget, x, calls, time.time() - start


def generate(model, schedule, prediction_type, n, sampler, steps, options, seed, batch_size):
    """n digits from fixed starting noise (seed) and fixed sampler noise (seed + 1); returns (x, calls)."""
    g_start = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 1, 28, 28, generator=g_start)
    g_noise = torch.Generator().manual_seed(seed + 1)
    out, calls = [], 0
    for i in range(0, n, batch_size):
        r = sample(model, schedule, x_T[i:i + batch_size], sampler=sampler, steps=steps,
                   prediction_type=prediction_type, generator=g_noise, model_schedule=schedule, **options)
        out.append(r.sample.clamp(-1, 1))
        calls = r.model_calls
    return torch.cat(out), calls


def main() -> None:
    from course_lib.core.cli import HelpFormatter  # --help shows each option's default

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=250, help="digits per point (at most 500, the size of the floor set)")
    p.add_argument("--calls", type=int, nargs="*", default=[5, 10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--no-ddpm-1000", action="store_true", help="skip the 1000-step DDPM reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="torch threads (per worker)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing samples in parallel")
    p.add_argument("--checkpoint", default="mnist_unet")
    p.add_argument("--folder", default=None,
                   help="where --checkpoint is stored (default: the course's data/), e.g. a training run's --folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_quality.json"))
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and skip them")
    args = p.parse_args()
    if not 2 <= args.n <= 500:
        p.error(f"--n must be between 2 and 500 (the floor set has 500 real test digits), got {args.n}")

    torch.set_num_threads(args.threads)
    ckpt = load_diffusion_checkpoint(args.checkpoint, args.folder)
    real_a = digit_features(MNIST5k("train").images)          # the reference: 4500 training digits
    real_b = digit_features(MNIST5k("test").images[:args.n])  # the floor: held-back real digits

    command = shlex.join(["python", "benchmarks/sampler_quality.py", *sys.argv[1:]])
    out = Path(args.out)
    result = {"command": command.strip(), "checkpoint": args.checkpoint, "folder": args.folder,
              "checkpoint_command": ckpt.meta["command"], "n": args.n, "seed": args.seed,
              "judge": "digit classifier features (notebook 00); reference: MNIST5k('train'), 4500 digits",
              "machine": f"{platform.machine()}, {args.workers} worker(s) x {args.threads} torch thread(s), "
                          "2 CPU cores shared with other jobs",
              "rows": []}
    if args.resume and out.is_file():
        earlier = json.loads(out.read_text())
        if earlier["checkpoint"] != args.checkpoint:
            p.error(f"--resume: {out} holds rows of checkpoint {earlier['checkpoint']!r}, not {args.checkpoint!r}")
        # the file describes its first run; the runs that added rows are listed after it
        result.update({key: earlier[key] for key in ("command", "machine", "seconds_first_run") if key in earlier})
        result["rows"] = earlier["rows"]
        result["resumed_with"] = earlier.get("resumed_with", []) + [command]
    floor = compare_sets(real_a, real_b, real_b)
    result["floor"] = {"frechet": round(floor.frechet, 3), "kid": round(floor.kid, 5),
                       "precision": round(floor.precision, 3), "recall": round(floor.recall, 3),
                       "what": f"{args.n} held-back real test digits against the reference"}
    print(f"floor (real vs real, n={args.n}): Frechet {floor.frechet:.2f}, KID {floor.kid:.4f}", flush=True)

    jobs = [(label, calls) for label in args.samplers for calls in args.calls]
    if not args.no_ddpm_1000:
        jobs.append(("DDPM", 1000))
    done = {(r["sampler"], r["budget"]) for r in result["rows"]}
    print(f"{'sampler':28s} {'budget':>6s} {'steps':>5s} {'calls':>5s} {'Frechet':>8s} {'KID':>8s} "
          f"{'prec':>5s} {'recall':>6s} {'seconds':>7s}", flush=True)
    total = time.time()
    todo = [(label, budget) for label, budget in jobs if (label, budget) not in done]
    todo.sort(key=lambda job: -job[1])                        # the longest first, for the workers
    order = {job: i for i, job in enumerate(jobs)}

    def record(label, budget, x, calls, seconds):
        name, options, extra = SAMPLERS[label]
        r = compare_sets(real_a, digit_features(x), real_b)
        row = {"sampler": label, "name": name, "options": options, "budget": budget, "steps": budget - extra,
               "model_calls": calls, "frechet": round(r.frechet, 3), "kid": round(r.kid, 5),
               "precision": round(r.precision, 3), "recall": round(r.recall, 3), "seconds": round(seconds, 1)}
        result["rows"].append(row)
        result["rows"].sort(key=lambda q: order.get((q["sampler"], q["budget"]), -1))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{label:28s} {budget:6d} {budget - extra:5d} {calls:5d} {r.frechet:8.2f} {r.kid:8.4f} "
              f"{r.precision:5.2f} {r.recall:6.2f} {seconds:7.0f}", flush=True)

    if args.workers <= 1:
        _init_worker(args.checkpoint, args.threads, args.folder)
        for label, budget in todo:
            record(*run_job(label, budget, args.n, args.seed, args.batch_size))
    else:
        with ProcessPoolExecutor(args.workers, initializer=_init_worker,
                                 initargs=(args.checkpoint, args.threads, args.folder)) as pool:
            futures = [pool.submit(run_job, label, budget, args.n, args.seed, args.batch_size)
                       for label, budget in todo]
            for f in as_completed(futures):
                record(*f.result())
    result.setdefault("seconds_first_run", round(time.time() - total, 1))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({time.time() - total:.0f} s)")


if __name__ == "__main__":
    main()
