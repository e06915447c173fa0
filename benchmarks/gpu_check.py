"""The GPU path, run for real (issue 15): every training script, a resume, torchrun, sampling, and speed.

    python benchmarks/gpu_check.py --device cuda                      # meant to take a few minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/gpu_check.json   # ~35 s on 2 shared CPU cores
    python benchmarks/gpu_check.py --device cuda --dry-run            # a quick smoke test at the dry run's sizes
    python benchmarks/gpu_check.py --device cuda --parts train,resume --scripts train_clip.py

Five parts (``--parts``), each reported as ok, FAIL or skipped (with the reason):

- ``train``: every training script in ``scripts/`` (its shipped config, ``configs/train/``, shortened) with
  ``--device DEV`` and ``--precision`` fp32, bf16 and fp16 (autocast; fp16 with a gradient scaler). A run is
  ok when it finishes, every loss in its saved training state (``--checkpoint-dir``) is finite, and the loss
  falls (mean of the last fifth below the first fifth; not asked of the adversarial DCGAN, and only reported
  in the dry run, whose runs are a few steps long).
- ``resume``: ``train_digit_classifier.py`` (dropout draws from the device's random generator) run to the
  end, stopped with ``--stop-after`` and continued with ``--resume``: ok only when the resumed run ends with
  exactly the uninterrupted run's weights (max abs difference 0, same sha256). It runs with
  ``torch.use_deterministic_algorithms(True, warn_only=True)``; a second uninterrupted run (the control)
  tells a resume bug from nondeterministic kernels.
- ``torchrun``: ``torchrun --standalone --nproc_per_node=1`` starts this file as a worker that joins the
  process group (NCCL on CUDA, gloo on the CPU), checks the backend and an all-reduce, and runs
  ``train_mnist_diffusion.py`` with the fp32 flags of the ``train`` part; its weights are compared with that
  run's (identical on the CPU; on a GPU float rounding may differ and is reported).
- ``sample``: the shipped text-to-image pipeline (``load_shipped_pipeline``) on DEV in fp32 and bf16 (U-Net),
  compared pixel by pixel with the CPU's fp32 images (images in [0, 1]; ok when the mean absolute difference
  is below 0.01 for fp32 and 0.02 for bf16, and every pixel is finite).
- ``speed``: the course's pipeline against diffusers' ``StableDiffusionPipeline`` on the same random
  SD-shaped weights (``benchmarks/pipeline_speed.py``'s ``build_folder``: latents 64x64 -> 512x512 images),
  20 DPM-Solver++ steps with guidance: fp32, bf16 and fp16 rows on CUDA (the course has no fp16 mode: its
  row is the course's bf16 U-Net against diffusers in fp16), plus one U-Net call alone in fp32 and bf16;
  course / diffusers ratio and the largest difference between their images.

``--dry-run`` runs every part at a tiny size: a few training steps of tiny models (the scripts that take
``--stop-after`` stop one or two steps early, which saves their training state and skips their CPU
evaluation, so the dry run stays well under a minute), 2 prompts and 8 sampler steps, an 8x8-latent speed
model timed once. On the CPU it skips what the CPU cannot do and says why: fp16 autocast (refused by the
scripts on the CPU), the bf16 and fp16 speed rows (bf16 convolutions take a slow path on CPUs without
AVX-512 bf16) and the U-Net call rows. It is what ``tests/test_gpu_check.py`` runs in CI.

Every model is saved under a temporary folder (``--workdir``, deleted at the end unless ``--keep``), never in
``data/``. The JSON (``--out``) is rewritten after every part, so a run cut short keeps what it measured.
The exit status is 1 when any check failed. ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set (unless already set)
before torch starts, as deterministic cuBLAS needs it for the resume check on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("COURSE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

PARTS = ("train", "resume", "torchrun", "sample", "speed")
PRECISIONS = ("fp32", "bf16", "fp16")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
SAMPLE_PROMPTS = ("a red circle above a blue square", "two green squares", "a large yellow triangle in the center",
                  "a purple cross to the left of a white circle")
SAMPLE_TOLERANCE = {"fp32": 0.01, "bf16": 0.02}  # mean absolute pixel difference from the CPU's fp32 images


@dataclass(frozen=True)
class ScriptCheck:
    """How to run one training script briefly: its config, the flags of a short run on a GPU (``full``) and of
    the tiny CPU dry run (``dry``), and what it offers (``--precision``, ``--threads``, ``--stop-after``)."""

    script: str
    config: str
    full: tuple[str, ...]
    dry: tuple[str, ...]
    dry_stop_after: int | None = None     # dry run: stop here (saves the state, skips the CPU evaluation)
    precision_flag: bool = True
    threads_flag: bool = True
    loss_should_fall: bool = True
    note: str = ""


SCRIPTS = (
    ScriptCheck("train_attribute_net.py", "shapeworld_attribute_net.yaml", ("--images", "4000", "--epochs", "1"),
                ("--images", "96", "--epochs", "1", "--batch-size", "16", "--width", "4"), dry_stop_after=5,
                threads_flag=False),
    ScriptCheck("train_autoencoder.py", "shapeworld_vae.yaml", ("--steps", "300"),
                ("--steps", "8", "--batch-size", "4", "--channels", "8", "8", "8"), dry_stop_after=6),
    ScriptCheck("train_clip.py", "clip_shapeworld.yaml", ("--steps", "100"),
                ("--steps", "8", "--batch-size", "16", "--width", "16", "--layers", "1", "--image-widths", "8", "8",
                 "8", "--embed-dim", "8"), dry_stop_after=6),
    ScriptCheck("train_digit_classifier.py", "digit_classifier.yaml", ("--epochs", "2",),
                ("--epochs", "1", "--batch-size", "500", "--width", "4", "--feature-dim", "8"), dry_stop_after=8,
                threads_flag=False),
    ScriptCheck("train_gan_vs_diffusion.py", "dcgan_mnist.yaml", ("--steps", "300",), ("--steps", "8",),
                dry_stop_after=6, precision_flag=False, loss_should_fall=False,
                note="the digit DCGAN (--part dcgan); adversarial, so its loss need not fall; the 2-D runs "
                     "(--part toy) always train on the CPU and are not a device check"),
    ScriptCheck("train_mnist_diffusion.py", "mnist_unet.yaml", ("--steps", "300", "--name", "gpu_check"),
                ("--steps", "8", "--batch-size", "8", "--base-channels", "8", "--name", "gpu_check")),
    ScriptCheck("train_segmentation.py", "segmentation_unet.yaml",
                ("--steps", "300", "--images", "4000", "--only", "skip"),
                ("--steps", "8", "--images", "64", "--batch-size", "8", "--base-channels", "4", "--only", "skip"),
                dry_stop_after=6, threads_flag=False,
                note="the U-Net with skips only (--only skip); its twin trains with the same loop"),
    ScriptCheck("train_text_to_image.py", "shapeworld_t2i_unet.yaml",
                ("--steps", "300", "--images", "8000", "--name", "gpu_check"),
                ("--steps", "8", "--images", "64", "--batch-size", "8", "--channels", "16", "16", "16", "--name",
                 "gpu_check")),
)
# Training scripts without the device flags (--device, --precision, --checkpoint-dir): not a device check.
CPU_ONLY_SCRIPTS = {
    "train_lora.py": "the LoRA of notebook 13 trains for minutes on one CPU thread; it has no --device, "
                     "--precision or --checkpoint-dir yet (its loop, train_diffusion_model, is checked through "
                     "train_text_to_image.py and train_mnist_diffusion.py)",
}

RESUME = ScriptCheck("train_digit_classifier.py", "digit_classifier.yaml", ("--epochs", "1"),
                     ("--epochs", "1", "--batch-size", "750", "--width", "4", "--feature-dim", "8"),
                     threads_flag=False)
RESUME_STOP = {"full": 30, "dry": 4}  # within the epoch (its shuffled order is restored): of ~70 batches; of 6
TORCHRUN_SCRIPT = "train_mnist_diffusion.py"


# ---------------------------------------------------------------------------------------------- helpers
def loss_summary(losses: Sequence[float]) -> dict[str, Any]:
    """First and last fifth of a loss curve (at least one value each): their means, whether every loss is
    finite and whether the curve falls (last mean below first)."""
    values = [float(v) for v in losses]
    if not values:
        return {"steps": 0, "finite": False, "falls": False, "loss_first": None, "loss_last": None}
    k = max(1, len(values) // 5)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    finite = all(math.isfinite(v) for v in values)
    return {"steps": len(values), "finite": finite, "falls": bool(finite and last < first),
            "loss_first": round(first, 6) if math.isfinite(first) else str(first),
            "loss_last": round(last, 6) if math.isfinite(last) else str(last)}


def state_losses(state_dir: Path) -> tuple[list[float], str]:
    """The losses recorded in the first training state under ``state_dir`` and where they were found
    (every training loop keeps them under ``loop``; states saved before the loops were unified kept
    ``train_diffusion_model``'s ``losses`` at the top)."""
    files = sorted(state_dir.rglob("training_state.json"))
    if not files:
        raise FileNotFoundError(f"no training_state.json under {state_dir}")
    meta = json.loads(files[0].read_text())
    if "losses" in meta:
        return [float(v) for v in meta["losses"]], f"{files[0].parent.name}: losses"
    loop = meta.get("loop", {})
    for key in ("losses", "loss", "loss_d"):
        if key in loop:
            return [float(v) for v in loop[key]], f"{files[0].parent.name}: loop.{key}"
    raise KeyError(f"{files[0]} records no losses (keys: {sorted(meta)}, loop: {sorted(loop)})")


def weights_digest(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes and bytes, in name order; the file's
    metadata left out) and the tensors."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest(), tensors


def compare_weights(a: Path, b: Path) -> dict[str, Any]:
    """Largest absolute difference between two saved models' tensors, their sha256, and ``identical``."""
    sha_a, ta = weights_digest(a)
    sha_b, tb = weights_digest(b)
    if ta.keys() != tb.keys():
        return {"max_abs_difference": None, "sha256": [sha_a, sha_b], "identical": False,
                "error": f"different tensors: {sorted(set(ta) ^ set(tb))[:5]}"}
    diff = max(((ta[k].double() - tb[k].double()).abs().max().item() if ta[k].numel() else 0.0) for k in ta)
    return {"max_abs_difference": diff, "sha256": [sha_a, sha_b], "identical": sha_a == sha_b and diff == 0.0}


def saved_weights(folder: Path) -> Path:
    """The one ``*.safetensors`` model a script saved in ``folder``."""
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one saved model in {folder}, found {[p.name for p in found]}")
    return found[0]


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings on CUDA are otherwise only of the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _number(value: float, digits: int = 6) -> float | str:
    """``value`` rounded, or as a string when it is not finite (JSON has no NaN)."""
    return round(value, digits) if math.isfinite(value) else str(value)


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def run_script(script: str, argv: list[str], log: Path) -> tuple[float, str | None]:
    """``scripts/SCRIPT``'s ``main(argv)`` in this process, its output in ``log``: (seconds, error or None)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    error = None
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        print(f"python scripts/{script} {' '.join(argv)}", flush=True)
        try:
            importlib.import_module(Path(script).stem).main(argv)
        except (Exception, SystemExit) as e:  # argparse errors exit; anything else is a failure to report
            traceback.print_exc(file=out)
            error = f"{type(e).__name__}: {e}"
    torch.set_num_threads(threads)  # some scripts set their own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return time.perf_counter() - start, error


def script_argv(spec: ScriptCheck, device: str, precision: str, dry: bool, threads: int) -> list[str]:
    """The flags of a short run of ``spec`` (without --folder and --checkpoint-dir)."""
    argv = ["--config", str(ROOT / "configs" / "train" / spec.config), *(spec.dry if dry else spec.full),
            "--device", device]
    if spec.precision_flag:
        argv += ["--precision", precision]
    if spec.threads_flag:
        argv += ["--threads", str(threads)]
    return argv


@contextlib.contextmanager
def deterministic() -> Iterator[list[warnings.WarningMessage]]:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` and deterministic cuDNN inside; yields
    the warnings raised meanwhile (ops without a deterministic kernel warn)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


# ---------------------------------------------------------------------------------------------- the check
class Check:
    """Runs the parts, collects rows, skips and failures, prints as it goes and writes the JSON."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]):
        self.args = args
        self.device = torch.device(args.device)
        self.dry = args.dry_run
        self.threads = torch.get_num_threads()
        self.workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out)
        self.start = time.perf_counter()
        self.result: dict[str, Any] = {
            "command": " ".join(["python benchmarks/gpu_check.py", *argv]),
            "device": str(self.device), "device_name": self._device_name(), "dry_run": self.dry,
            "torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": self.threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}, "skipped": [], "failures": []}

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()

    def say(self, text: str) -> None:
        print(text, flush=True)

    def skip(self, what: str, why: str) -> dict[str, str]:
        entry = {"what": what, "why": why}
        self.result["skipped"].append(entry)
        self.say(f"  skipped  {what}: {why}")
        return entry

    def fail(self, what: str, why: str) -> None:
        self.result["failures"].append(f"{what}: {why}")
        self.say(f"  FAIL     {what}: {why}")

    def write(self) -> None:
        self.result["wall_seconds"] = round(time.perf_counter() - self.start, 1)
        self.result["ok"] = not self.result["failures"]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1) + "\n")

    def precision_skip(self, precision: str) -> str | None:
        """Why ``precision`` cannot run on this device (None when it can)."""
        from course_lib.train.distributed import resolve_precision

        try:
            resolve_precision(precision, self.device)
        except ValueError as e:
            return f"refused by course_lib.train.distributed.resolve_precision: {e}"
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return f"{self._device_name()} does not support bfloat16"
        return None

    def run_part(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        self.say(f"\n== {name}")
        part_start = time.perf_counter()
        failures_before = len(self.result["failures"])
        try:
            part = fn()
        except Exception as e:  # a part that breaks is reported, and the others still run
            traceback.print_exc()
            part = {}
            self.fail(name, f"{type(e).__name__}: {e}")
        part["seconds"] = round(time.perf_counter() - part_start, 1)
        part["status"] = "FAIL" if len(self.result["failures"]) > failures_before else part.get("status", "ok")
        self.result["parts"][name] = part
        self.write()

    # ------------------------------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        rows = []
        chosen = [s for s in SCRIPTS if not self.args.scripts or s.script in self.args.scripts]
        for spec in chosen:
            if spec.note:
                self.say(f"  note     {spec.script}: {spec.note}")
            for precision in self.args.precisions:
                what = f"train {spec.script} {precision}"
                why = self.precision_skip(precision)
                if why is None and not spec.precision_flag and precision != "fp32":
                    why = f"{spec.script} has no --precision flag (it trains in fp32)"
                if why is not None:
                    rows.append({"script": spec.script, "precision": precision, "status": "skipped",
                                 "why": self.skip(what, why)["why"]})
                    continue
                rows.append(self.train_one(spec, precision, what))
        statuses = {r["status"] for r in rows}
        return {"rows": rows, "status": "FAIL" if "FAIL" in statuses else "ok" if "ok" in statuses else "skipped"}

    def train_one(self, spec: ScriptCheck, precision: str, what: str) -> dict[str, Any]:
        run = self.workdir / "train" / Path(spec.script).stem / precision
        argv = script_argv(spec, str(self.device), precision, self.dry, self.threads)
        argv += ["--folder", str(run / "out"), "--checkpoint-dir", str(run / "state")]
        stop = spec.dry_stop_after if self.dry else None
        if stop is not None:
            argv += ["--stop-after", str(stop)]
        seconds, error = run_script(spec.script, argv, run / "log.txt")
        row: dict[str, Any] = {"script": spec.script, "precision": precision, "seconds": round(seconds, 2),
                               "command": f"python scripts/{spec.script} {' '.join(argv)}",
                               "ended": "stopped by --stop-after (state saved, evaluation skipped)" if stop
                               else "ran to the end and saved its model"}
        if error is not None:
            row.update(status="FAIL", error=error, log_tail=_tail(run / "log.txt"))
            self.fail(what, error)
            return row
        try:
            losses, source = state_losses(run / "state")
        except (OSError, KeyError, ValueError) as e:
            row.update(status="FAIL", error=str(e))
            self.fail(what, str(e))
            return row
        row.update(loss_source=source, **loss_summary(losses))
        row["loss_must_fall"] = spec.loss_should_fall and not self.dry
        if stop is None:
            row.update(self._saved_metrics(run / "out"))
        problems = []
        if not row["finite"]:
            problems.append("a loss is not finite")
        if row["loss_must_fall"] and not row["falls"]:
            problems.append(f"the loss did not fall ({row['loss_first']} -> {row['loss_last']})")
        row["status"] = "FAIL" if problems else "ok"
        if problems:
            self.fail(what, "; ".join(problems))
        else:
            ips = f", {row['images_per_second']:.0f} img/s" if row.get("images_per_second") else ""
            trend = "falls" if row["falls"] else "does not fall" + ("" if row["loss_must_fall"] else " (not required)")
            self.say(f"  ok       {what}: {row['steps']} steps in {seconds:.1f} s{ips}; loss {row['loss_first']} -> "
                     f"{row['loss_last']} ({trend})")
        return row

    @staticmethod
    def _saved_metrics(folder: Path) -> dict[str, Any]:
        """images/s and training minutes from the metrics of the model a script saved (where it records them)."""
        found = {}
        for path in sorted(folder.glob("*.json")):
            if path.name == "manifest.json":
                continue
            metrics = json.loads(path.read_text()).get("metrics", {})
            for key in ("images_per_second", "train_minutes"):
                if key in metrics:
                    found[key] = metrics[key]
        return found

    # ------------------------------------------------------------------------------------------ resume
    def resume(self) -> dict[str, Any]:
        spec, mode = RESUME, "dry" if self.dry else "full"
        stop = RESUME_STOP[mode]
        base = script_argv(spec, str(self.device), "fp32", self.dry, self.threads)
        folder = self.workdir / "resume"
        runs = {"uninterrupted": ["--folder", str(folder / "uninterrupted")],
                "control": ["--folder", str(folder / "control")],
                "stopped": ["--folder", str(folder / "stopped"), "--checkpoint-dir", str(folder / "state"),
                            "--stop-after", str(stop)],
                "resumed": ["--folder", str(folder / "resumed"), "--resume", str(folder / "state")]}
        seconds = {}
        with deterministic() as caught:
            for name, extra in runs.items():
                seconds[name], error = run_script(spec.script, base + extra, folder / f"{name}.log")
                if error is not None:
                    self.fail(f"resume ({name} run)", error)
                    return {"script": spec.script, "error": error, "log_tail": _tail(folder / f"{name}.log")}
        notes = sorted({str(w.message).splitlines()[0] for w in caught if "determinis" in str(w.message)})
        state = json.loads((folder / "state" / "training_state.json").read_text())
        shipped_stopped = sorted(p.name for p in (folder / "stopped").glob("*"))  # a stopped run ships nothing
        resumed = compare_weights(saved_weights(folder / "uninterrupted"), saved_weights(folder / "resumed"))
        control = compare_weights(saved_weights(folder / "uninterrupted"), saved_weights(folder / "control"))
        part = {"script": spec.script, "command": f"python scripts/{spec.script} {' '.join(base)}",
                "stopped_at": state["step"], "total_steps": state["total_steps"],
                "stopped_run_shipped": shipped_stopped, "resumed_vs_uninterrupted": resumed,
                "control_vs_uninterrupted": control, "exact": resumed["identical"],
                "run_seconds": {k: round(v, 2) for k, v in seconds.items()}, "nondeterminism_warnings": notes}
        what = f"resume {spec.script} (stopped at {state['step']} of {state['total_steps']})"
        if state["step"] != stop or shipped_stopped:
            self.fail(what, f"the stopped run saved its state at step {state['step']} (expected {stop}) and "
                            f"shipped {shipped_stopped}")
        if resumed["identical"]:
            self.say(f"  ok       {what}: identical weights (sha256 {resumed['sha256'][0][:16]}...)")
        else:
            why = ("the control run differs as well: the kernels are not deterministic on this device"
                   if not control["identical"] else "the control run is identical, so the resume changed the run")
            self.fail(what, f"max abs difference {resumed['max_abs_difference']} ({why})")
        return part

    # ------------------------------------------------------------------------------------------ torchrun
    def torchrun(self) -> dict[str, Any]:
        spec = next(s for s in SCRIPTS if s.script == TORCHRUN_SCRIPT)
        folder = self.workdir / "torchrun"
        # under torchrun each process takes cuda:LOCAL_RANK itself, so pass the device type ("cuda", not "cuda:1")
        argv = script_argv(spec, self.device.type, "fp32", self.dry, self.threads) + ["--folder", str(folder / "out")]
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env.update(OMP_NUM_THREADS=str(self.threads), COURSE_NO_PROGRESS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(Path(__file__).resolve()), "--torchrun-worker", str(folder / "worker.json"), "--device",
               self.device.type, "--", TORCHRUN_SCRIPT, *argv]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=180 if self.dry else 600)
        seconds = time.perf_counter() - start
        part: dict[str, Any] = {"command": "torchrun --standalone --nproc_per_node=1 scripts/"
                                           f"{TORCHRUN_SCRIPT} {' '.join(argv)}", "seconds": round(seconds, 1)}
        what = "torchrun --nproc_per_node=1"
        if proc.returncode != 0 or not (folder / "worker.json").is_file():
            part["log_tail"] = (proc.stdout + proc.stderr)[-3000:]
            self.fail(what, f"exit status {proc.returncode}")
            return part
        worker = json.loads((folder / "worker.json").read_text())
        part.update(worker)
        expected = "nccl" if self.device.type == "cuda" else "gloo"
        problems = []
        if worker.get("error"):
            problems.append(worker["error"])
        if worker.get("backend") != expected:
            problems.append(f"backend {worker.get('backend')}, expected {expected}")
        if worker.get("world_size") != 1 or worker.get("all_reduce") != 1.0:
            problems.append(f"world size {worker.get('world_size')}, all-reduce of 1 gave {worker.get('all_reduce')}")
        single = self.workdir / "train" / Path(TORCHRUN_SCRIPT).stem / "fp32" / "out"
        if not problems:
            if single.is_dir() and list(single.glob("*.safetensors")):
                part["vs_single_process"] = compare_weights(saved_weights(single), saved_weights(folder / "out"))
                diff = part["vs_single_process"]["max_abs_difference"]
                if self.device.type == "cpu" and not part["vs_single_process"]["identical"]:
                    problems.append(f"weights differ from the single-process run by {diff} on the CPU")
            else:
                part["vs_single_process"] = self.skip(
                    "torchrun vs single process", "the train part's fp32 run of train_mnist_diffusion.py did not "
                                                  "run (not chosen, or it failed)")
        if problems:
            part["log_tail"] = (proc.stdout + proc.stderr)[-3000:]
            self.fail(what, "; ".join(problems))
        else:
            diff = part["vs_single_process"].get("max_abs_difference", "n/a")
            self.say(f"  ok       {what}: backend {worker['backend']}, all-reduce ok, trained {TORCHRUN_SCRIPT} "
                     f"in {seconds:.1f} s; max abs difference from the plain run {diff}")
        return part

    # ------------------------------------------------------------------------------------------ sample
    def sample(self) -> dict[str, Any]:
        from course_lib.pipeline.shipped import load_shipped_pipeline

        prompts = list(SAMPLE_PROMPTS[:2] if self.dry else SAMPLE_PROMPTS)
        settings = {"sampler": "dpm-solver++", "steps": 8 if self.dry else 20, "guidance_scale": 4.0, "seed": 0}
        with torch.no_grad():
            reference = load_shipped_pipeline(device="cpu")(prompts, show_progress=False, **settings).images.float()
        rows = []
        for precision in ("fp32", "bf16"):
            what = f"sample on {self.device} {precision} vs cpu fp32"
            if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                rows.append({"precision": precision, "status": "skipped",
                             "why": self.skip(what, f"{self._device_name()} does not support bfloat16")["why"]})
                continue
            pipe = load_shipped_pipeline(use_bf16=precision == "bf16", device=self.device)
            with torch.no_grad():
                pipe(prompts[:1], show_progress=False, **{**settings, "steps": 2})  # warm-up (CUDA kernels)
                sync(self.device)
                start = time.perf_counter()
                images = pipe(prompts, show_progress=False, **settings).images.float()
                sync(self.device)
                seconds = time.perf_counter() - start
            diff = (images - reference).abs()
            row = {"precision": precision, "images": len(prompts), "seconds": round(seconds, 3),
                   "max_abs_difference": round(diff.max().item(), 6),
                   "mean_abs_difference": round(diff.mean().item(), 6),
                   "finite": bool(torch.isfinite(images).all()), "tolerance_mean": SAMPLE_TOLERANCE[precision]}
            if self.device.type == "cpu" and precision == "fp32":
                row["note"] = "the same device as the reference: a determinism check (0 expected)"
            ok = row["finite"] and row["mean_abs_difference"] < SAMPLE_TOLERANCE[precision]
            row["status"] = "ok" if ok else "FAIL"
            if ok:
                self.say(f"  ok       {what}: mean |difference| {row['mean_abs_difference']:.5f}, max "
                         f"{row['max_abs_difference']:.4f} (pixels in [0, 1]); {len(prompts)} images in "
                         f"{seconds:.2f} s")
            else:
                self.fail(what, f"mean |difference| {row['mean_abs_difference']} (tolerance "
                                f"{SAMPLE_TOLERANCE[precision]}), finite {row['finite']}")
            rows.append(row)
        return {"settings": settings, "prompts": prompts, "rows": rows}

    # ------------------------------------------------------------------------------------------ speed
    def speed(self) -> dict[str, Any]:
        import diffusers

        from benchmarks.pipeline_speed import GUIDANCE, PROMPT, STYLE, build_folder, diffusers_pipeline, timed
        from course_lib.diffusion.guidance import apply_style
        from course_lib.pipeline.convert import load_diffusers_pipeline

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        latent = 8 if self.dry else 64
        steps, sampler, repeats = 20, "dpm-solver++", 1 if self.dry else 3
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folder = build_folder(self.workdir / "speed", latent)
        dev = self.device
        cuda = dev.type == "cuda"
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        # (what, course in bf16?, diffusers' dtype name, whole pipeline?)
        cases = [("pipeline, fp32", False, "fp32", True)]
        if cuda:
            cases += [("pipeline, bf16", True, "bf16", True),
                      ("pipeline, course bf16 U-Net vs diffusers fp16", True, "fp16", True),
                      ("U-Net call (batch 2), fp32", False, "fp32", False),
                      ("U-Net call (batch 2), bf16", True, "bf16", False)]
            if not torch.cuda.is_bf16_supported():
                cases = [c for c in cases if not c[1]]
                self.skip("speed bf16 rows", f"{self._device_name()} does not support bfloat16")
        else:
            self.skip("speed bf16 and fp16 rows",
                      "timed on CUDA only: fp16 is not a course precision on the CPU, and a bf16 pipeline on a CPU "
                      "is benchmarks/pipeline_speed.py --bf16-pipeline's job (minutes on CPUs without AVX-512 bf16; "
                      f"this one's torch kernels: {torch.backends.cpu.get_cpu_capability()})")
            self.skip("speed U-Net call rows", "on CUDA only (the dry run keeps the CPU's time short)")
        if cuda:
            self.say("  note     the course has no fp16 mode (use_bf16 only): its fp16 row runs its bf16 U-Net")
        course: dict[bool, Any] = {}
        reference: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _, bf16, name, _ in cases:
                if bf16 not in course:
                    course[bf16] = load_diffusers_pipeline(folder, use_bf16=bf16, device=dev)
                if name not in reference:
                    reference[name] = diffusers_pipeline(folder, sampler, dtypes[name], dev)
        prompt, negative = apply_style(PROMPT, "", STYLE)
        latents = course[False].initial_latents([0])
        c, h, w = course[False].latent_shape
        ctx = torch.randn(2, 77, course[False].unet.config.cross_attention_dim, device=dev)
        x, t = torch.randn(2, c, h, w, device=dev), torch.tensor([500, 500], device=dev)

        def course_fn(bf16: bool, whole: bool) -> Callable[[], Any]:
            pipe = course[bf16]
            if whole:
                return lambda: pipe(PROMPT, style=STYLE, sampler=sampler, steps=steps, guidance_scale=GUIDANCE,
                                    latents=latents, show_progress=False).images
            dtype = torch.bfloat16 if bf16 else torch.float32
            return lambda: pipe.unet(x.to(dtype), t, ctx.to(dtype))

        def diffusers_fn(name: str, whole: bool) -> Callable[[], Any]:
            pipe, dtype = reference[name], dtypes[name]
            if whole:
                return lambda: pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps,
                                    guidance_scale=GUIDANCE, latents=latents.to(dev, dtype), output_type="pt").images
            return lambda: pipe.unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype), return_dict=False)

        def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                out = fn()
                sync(dev)
                return out
            return call

        rows = []
        with torch.no_grad():
            for what, bf16, name, whole in cases:
                ours, theirs = synced(course_fn(bf16, whole)), synced(diffusers_fn(name, whole))
                ours_s, ours_all = timed(ours, repeats)
                theirs_s, theirs_all = timed(theirs, repeats)
                row = {"what": what, "course_s": round(ours_s, 4), "diffusers_s": round(theirs_s, 4),
                       "ratio": round(ours_s / theirs_s, 3), "course_runs": [round(v, 4) for v in ours_all],
                       "diffusers_runs": [round(v, 4) for v in theirs_all]}
                ok = math.isfinite(row["ratio"]) and row["ratio"] > 0
                if whole:  # the course's images must be finite; diffusers' are reported (random weights in fp16)
                    a, b = ours().float().cpu(), theirs().float().cpu()
                    row["course_images_finite"] = bool(torch.isfinite(a).all())
                    row["diffusers_images_finite"] = bool(torch.isfinite(b).all())
                    row["max_abs_image_difference"] = _number((a - b).abs().max().item())
                    ok = ok and row["course_images_finite"]
                row["status"] = "ok" if ok else "FAIL"
                if ok:
                    extra = f"; images differ by {row['max_abs_image_difference']}" if whole else ""
                    self.say(f"  ok       speed {what}: course {ours_s:.3f} s, diffusers {theirs_s:.3f} s, "
                             f"course/diffusers {row['ratio']:.2f}{extra}")
                else:
                    self.fail(f"speed {what}", f"ratio {row['ratio']}, image difference "
                                               f"{row.get('max_abs_image_difference')}")
                rows.append(row)
        n_params = sum(p.numel() for p in course[False].unet.parameters())
        side = h * 2 ** (len(course[False].vae.config.block_out_channels) - 1)
        return {"model": f"random SD 2-shaped weights (benchmarks/pipeline_speed.py build_folder), latents {c}x{h}x{w} "
                         f"-> {side}x{side}, U-Net {n_params / 1e6:.1f}M parameters",
                "sampler": sampler, "steps": steps, "guidance_scale": GUIDANCE, "repeats": repeats,
                "diffusers": diffusers.__version__, "rows": rows}

    # ------------------------------------------------------------------------------------------ report
    def table(self) -> str:
        lines = [f"{'part':9s} {'what':54s} {'result':58s} status"]

        def add(part: str, what: str, result: str, status: str) -> None:
            lines.append(f"{part:9s} {what[:54]:54s} {result[:58]:58s} {status}")

        parts = self.result["parts"]
        for row in parts.get("train", {}).get("rows", []):
            if row["status"] == "skipped":
                result = "skipped: " + row["why"]
            elif "error" in row:
                result = row["error"]
            else:
                ips = f", {row['images_per_second']:.0f} img/s" if row.get("images_per_second") else ""
                result = f"loss {row['loss_first']} -> {row['loss_last']}, {row['seconds']:.1f} s{ips}"
            add("train", f"{row['script']} {row['precision']}", result, row["status"])
        if "resume" in parts:
            p = parts["resume"]
            diff = p.get("resumed_vs_uninterrupted", {}).get("max_abs_difference", p.get("error"))
            add("resume", f"{p.get('script')} stop {p.get('stopped_at')}/{p.get('total_steps')}, resume",
                f"max abs difference {diff}", p["status"])
        if "torchrun" in parts:
            p = parts["torchrun"]
            diff = p.get("vs_single_process", {}).get("max_abs_difference", "n/a")
            add("torchrun", f"nproc 1, {TORCHRUN_SCRIPT}", f"backend {p.get('backend')}, vs plain run {diff}",
                p["status"])
        for row in parts.get("sample", {}).get("rows", []):
            result = ("skipped: " + row["why"] if row["status"] == "skipped" else
                      f"mean {row['mean_abs_difference']:.5f}, max {row['max_abs_difference']:.4f}")
            add("sample", f"{self.device} {row['precision']} vs cpu fp32", result, row["status"])
        for row in parts.get("speed", {}).get("rows", []):
            add("speed", row["what"],
                f"{row['course_s']:.3f} s vs {row['diffusers_s']:.3f} s: ratio {row['ratio']:.2f}", row["status"])
        for name, p in parts.items():
            if p["status"] == "FAIL" and not any(line.startswith(name) for line in lines[1:]):
                add(name, "(the part broke)", "; ".join(f for f in self.result["failures"] if f.startswith(name)),
                    "FAIL")
        return "\n".join(lines)

    def run(self) -> int:
        device_note = f"{self.device} ({self._device_name()})"
        self.say(f"gpu_check on {device_note}, torch {torch.__version__}, {self.threads} CPU thread(s)"
                 + (", dry run (tiny sizes)" if self.dry else "") + f"; work folder {self.workdir}")
        for name in PARTS:
            if name in self.args.parts:
                self.run_part(name, getattr(self, name))
            else:
                self.skip(f"part {name}", "not chosen with --parts")
        self.write()
        self.say("\n" + self.table())
        if self.result["skipped"]:
            self.say("\nskipped:\n" + "\n".join(f"  {s['what']}: {s['why']}" for s in self.result["skipped"]))
        verdict = "every check passed" if self.result["ok"] else f"{len(self.result['failures'])} check(s) FAILED"
        self.say(f"\n{verdict} in {self.result['wall_seconds']:.1f} s; wrote {self.out}")
        if not self.args.keep and not self.args.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 0 if self.result["ok"] else 1


def torchrun_worker(out: Path, device: str, script_and_args: list[str]) -> None:
    """Under torchrun: join the process group, note its backend, all-reduce a 1, then run the script here."""
    from course_lib.train.distributed import init_distributed

    report: dict[str, Any] = {}
    try:
        ctx = init_distributed(device)
        one = torch.ones(1, device=ctx.device)
        torch.distributed.all_reduce(one)
        report = {"backend": ctx.backend, "world_size": ctx.world_size, "rank": ctx.rank,
                  "worker_device": str(ctx.device), "all_reduce": float(one.item())}
        script, *argv = script_and_args
        importlib.import_module(Path(script).stem).main(argv)  # joins the running group, leaves it at the end
    except Exception as e:
        traceback.print_exc()
        report["error"] = f"{type(e).__name__}: {e}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run the chosen parts; returns the exit status (1 when a check failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from course_lib.core.cli import HelpFormatter  # --help shows each option's default

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default: cuda)")
    p.add_argument("--dry-run", action="store_true", help="every part at a tiny size (about a minute on 2 CPU cores)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--scripts", nargs="+", default=None, metavar="SCRIPT",
                   help="train part: only these scripts (e.g. train_clip.py)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="train part: these autocast precisions (default: all three)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, OMP_NUM_THREADS)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"),
                   help="the JSON of results (default: benchmarks/results/gpu_check.json)")
    p.add_argument("--workdir", default=None, help="where the runs save (default: a temporary folder, deleted)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--torchrun-worker", default=None, metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.torchrun_worker:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        torchrun_worker(Path(args.torchrun_worker), args.device, rest)
        return 0
    if args.rest:
        p.error(f"unrecognized arguments: {' '.join(args.rest)}")
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    if args.scripts:
        known = {s.script for s in SCRIPTS}
        args.scripts = [Path(s).name for s in args.scripts]
        if set(args.scripts) - known:
            p.error(f"unknown script(s) {', '.join(sorted(set(args.scripts) - known))}; "
                    f"scripts: {', '.join(sorted(known))}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU here; run the dry run with --device cpu --dry-run")
    return Check(args, argv).run()


if __name__ == "__main__":
    sys.exit(main())
