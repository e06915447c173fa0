"""Tiny runs of every training script, and the sha256 of the weights they save: a refactoring check.

    python benchmarks/tiny_run_hashes.py                                   # run them all, print the table
    python benchmarks/tiny_run_hashes.py --root /tmp/base --save before.json      # record (another checkout)
    python benchmarks/tiny_run_hashes.py --compare before.json             # exit status 1 on any difference
    python benchmarks/tiny_run_hashes.py --scripts train_clip.py t2i_mmdit_flow --compare before.json

A refactoring of ``course_lib`` (modules moved, training loops unified) should not change a single bit
of what the training scripts make. This file runs every ``scripts/train_*.py`` of the checkout given by
``--root`` (default: the one this file lives in) as a subprocess, ``python scripts/train_X.py ...``, at a
tiny size (the dry-run sizes of ``benchmarks/gpu_check.py``, copied here as data), in fp32 on the CPU
with one thread, each into its own folder under a temporary work folder (never ``data/``), and hashes
what each run saved:

- ``.safetensors`` files: sha256 over the tensors' names, dtypes, shapes and raw bytes, in name order
  (the same digest as ``gpu_check.weights_digest``); the file's header metadata (command lines, the LoRA's
  base model) is left out. The file is parsed here, without torch.
- other files (the CLIP run's tokenizer): sha256 of the bytes.
- JSON metadata written beside the weights (``NAME.json``, ``manifest.json``, ``training_state.json``)
  holds timings and command lines: listed as skipped, not hashed.

Runs that are cheap to the end (a few seconds) run to the end and save their final weights, and their
training state too where the script takes ``--checkpoint-dir`` (weights, EMA, optimizer moments, random
generator). The two whose end is a slow CPU evaluation (the autoencoder's scale factor and Frechet
distances; the DCGAN's Frechet distance) stop with ``--stop-after`` two steps before the end, as
gpu_check's dry run does, and only their training state is hashed.

It imports nothing of ``course_lib`` but the ``--help`` layout, ``course_lib.core.cli`` (it must run the
scripts of the code before and after a refactoring). Each run's
environment: ``PYTHONPATH=ROOT`` (the training scripts that do not put their repository first on
``sys.path`` would otherwise import whatever ``course_lib`` an editable install points at),
``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``COURSE_NO_PROGRESS=1``, ``PYTHONHASHSEED=0``, no
visible CUDA device, no ``COURSE_DATA_DIR``/``COURSE_DEVICE``/torchrun variables. A ``sitecustomize``
probe (on ``PYTHONPATH`` after ROOT; it only registers an ``atexit`` hook) records which files every
imported ``course_lib`` module came from, torch's version, CPU capability and thread count: a run that
imported ``course_lib`` from outside ROOT fails. ROOT's ``data/`` and ``benchmarks/results/`` are listed
before and after (sizes, modification times): a run that wrote there fails.

``--save FILE`` writes the hashes (and per-tensor digests, the arguments, the configs' values) as JSON;
``--compare FILE`` marks each row ``same`` or ``DIFFERENT`` (also ``MISSING``, ``NEW``, ``FAILED``), says
which tensors differ, and exits with status 1 on any difference. Compare on the same machine and torch
(both are recorded; a difference is warned about): float kernels differ between CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

THIS_ROOT = Path(__file__).resolve().parent.parent
FORMAT = "tiny_run_hashes/1"
WORK = "{work}"  # stands for the run's folder in the recorded arguments
WATCHED = ("data", "benchmarks/results")  # folders of the checkout no run may write to


@dataclass(frozen=True)
class Run:
    """One tiny run: ``scripts/SCRIPT --config configs/train/CONFIG ARGV`` plus the flags it accepts."""

    name: str                           # the key in the JSON and for --scripts
    script: str
    config: str | None                  # in configs/train/
    argv: tuple[str, ...]
    stop_after: int | None = None       # stop here (saves the training state, skips the slow evaluation)
    device_flag: bool = True            # --device cpu
    precision_flag: bool = True         # --precision fp32
    threads_flag: bool = True           # --threads 1 (else OMP_NUM_THREADS=1 alone sets it)
    checkpoint_flag: bool = True        # --checkpoint-dir {work}/state
    note: str = ""

    @property
    def label(self) -> str:
        return self.script if not self.note else f"{self.script} ({self.note})"


# The dry-run sizes of benchmarks/gpu_check.py's SCRIPTS (copied, not imported: gpu_check imports course_lib).
RUNS = (
    Run("attribute_net", "train_attribute_net.py", "shapeworld_attribute_net.yaml",
        ("--images", "96", "--epochs", "1", "--batch-size", "16", "--width", "4"), threads_flag=False),
    Run("autoencoder", "train_autoencoder.py", "shapeworld_vae.yaml",
        ("--steps", "8", "--batch-size", "4", "--channels", "8", "8", "8"), stop_after=6),
    Run("clip", "train_clip.py", "clip_shapeworld.yaml",
        ("--steps", "8", "--batch-size", "16", "--width", "16", "--layers", "1", "--image-widths", "8", "8", "8",
         "--embed-dim", "8")),
    Run("digit_classifier", "train_digit_classifier.py", "digit_classifier.yaml",
        ("--epochs", "1", "--batch-size", "500", "--width", "4", "--feature-dim", "8"), threads_flag=False),
    Run("dcgan", "train_gan_vs_diffusion.py", "dcgan_mnist.yaml", ("--steps", "8"), stop_after=6,
        precision_flag=False, note="--part dcgan"),
    Run("toy_gan_vs_diffusion", "train_gan_vs_diffusion.py", "toy_gan_vs_diffusion.yaml",
        ("--seeds", "1", "--steps", "8"), precision_flag=False, note="--part toy"),
    Run("mnist_diffusion", "train_mnist_diffusion.py", "mnist_unet.yaml",
        ("--steps", "8", "--batch-size", "8", "--base-channels", "8", "--name", "gpu_check")),
    Run("segmentation", "train_segmentation.py", "segmentation_unet.yaml",
        ("--steps", "8", "--images", "64", "--batch-size", "8", "--base-channels", "4"), threads_flag=False,
        note="both networks"),
    Run("t2i_unet", "train_text_to_image.py", "shapeworld_t2i_unet.yaml",
        ("--steps", "8", "--images", "64", "--batch-size", "8", "--channels", "16", "16", "16", "--name",
         "gpu_check"), note="U-Net, DDPM"),
    Run("t2i_mmdit_flow", "train_text_to_image.py", "shapeworld_mmdit_flow.yaml",
        ("--model", "mmdit", "--objective", "flow", "--steps", "8", "--images", "64", "--batch-size", "8",
         "--layers", "1", "--heads", "2", "--head-dim", "8", "--name", "tiny_mmdit_flow"), note="MMDiT, flow"),
    Run("lora", "train_lora.py", "shapeworld_lora_green_circle.yaml",
        ("--steps", "8", "--images", "32", "--replay", "32", "--batch-size", "8", "--warmup-steps", "2",
         "--eval-captions", "0", "--eval-seen", "0", "--eval-neighbours", "0", "--name", "tiny_lora"),
        device_flag=False, precision_flag=False, checkpoint_flag=False),
)

# Dropped from every run's environment (set by the caller, they would change what a run reads or does).
DROPPED_ENV = ("COURSE_DATA_DIR", "COURSE_DEVICE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
               "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID",
               "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG", "PYTHONSTARTUP", "PYTHONINSPECT")
SET_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COURSE_NO_PROGRESS": "1", "PYTHONHASHSEED": "0",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

PROBE = '''"""Written by benchmarks/tiny_run_hashes.py: at exit, which course_lib this run imported."""
import atexit
import json
import os
import sys


def _tiny_run_probe():
    out = os.environ.get("TINY_RUN_PROBE_OUT")
    if not out:
        return
    info = {"course_lib": {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
                           if name == "course_lib" or name.startswith("course_lib.")}}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            info.update(torch=torch.__version__, threads=torch.get_num_threads(),
                        cpu_capability=torch.backends.cpu.get_cpu_capability())
        except Exception as e:
            info["torch_error"] = repr(e)
    with open(out, "w") as f:
        json.dump(info, f)


atexit.register(_tiny_run_probe)


def _chain():  # run the sitecustomize this one hides, if there is one
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
'''

# safetensors dtype codes, named as torch prints them (so the digest is gpu_check.weights_digest's)
TORCH_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                "F8_E4M3": "torch.float8_e4m3fn", "F8_E5M2": "torch.float8_e5m2", "I64": "torch.int64",
                "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8", "U64": "torch.uint64",
                "U32": "torch.uint32", "U16": "torch.uint16", "U8": "torch.uint8", "BOOL": "torch.bool"}
METADATA_JSON = ("manifest.json", "training_state.json")  # and NAME.json beside NAME.safetensors


# ---------------------------------------------------------------------------------------------- hashing
def safetensors_tensors(path: Path) -> Iterator[tuple[str, str, tuple[int, ...], bytes]]:
    """(name, torch dtype name, shape, raw bytes) of every tensor in a safetensors file, in name order."""
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path} is too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    for name in sorted(header):
        info = header[name]
        start, end = info["data_offsets"]
        yield name, TORCH_DTYPES.get(info["dtype"], info["dtype"]), tuple(info["shape"]), data[base + start:base + end]


def tensor_file_digest(path: Path) -> dict[str, Any]:
    """sha256 over names, dtypes, shapes and bytes in name order (``sha256``); the same over dtypes, shapes
    and bytes alone, in the order of their own digests (``content_sha256``: a pure renaming keeps it); a
    short digest per tensor (to say which differ); the count; the file's own sha256 (header included)."""
    h = hashlib.sha256()
    per_tensor: dict[str, str] = {}
    for name, dtype, shape, raw in safetensors_tensors(path):
        h.update(f"{name}|{dtype}|{shape}|".encode())
        h.update(raw)
        per_tensor[name] = f"{dtype.removeprefix('torch.')} {list(shape)} {hashlib.sha256(raw).hexdigest()[:16]}"
    content = hashlib.sha256("\n".join(sorted(per_tensor.values())).encode()).hexdigest()
    return {"kind": "tensors", "sha256": h.hexdigest(), "content_sha256": content, "count": len(per_tensor),
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tensors": per_tensor}


def is_metadata_json(path: Path) -> bool:
    """JSON written beside the weights (config, command, timings, losses): not hashed."""
    return path.suffix == ".json" and (path.name in METADATA_JSON or path.with_suffix(".safetensors").is_file())


def digest_folder(folder: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The digests of the files a run saved under ``folder`` (relative paths) and the skipped files."""
    files, skipped = {}, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in ("log.txt", "probe.json") or rel.startswith("site/"):
            continue
        if path.suffix == ".safetensors":
            files[rel] = tensor_file_digest(path)
        elif is_metadata_json(path):
            skipped.append(rel)
        else:
            files[rel] = {"kind": "bytes", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return files, skipped


# ---------------------------------------------------------------------------------------------- running
def run_argv(run: Run, root: Path) -> list[str]:
    """The script's flags, with ``{work}`` for the run's folder."""
    argv = []
    if run.config:
        argv += ["--config", str(root / "configs" / "train" / run.config)]
    argv += list(run.argv)
    if run.device_flag:
        argv += ["--device", "cpu"]
    if run.precision_flag:
        argv += ["--precision", "fp32"]
    if run.threads_flag:
        argv += ["--threads", "1"]
    argv += ["--folder", f"{WORK}/out"]
    if run.checkpoint_flag:
        argv += ["--checkpoint-dir", f"{WORK}/state"]
    if run.stop_after is not None:
        argv += ["--stop-after", str(run.stop_after)]
    return argv


def recorded_argv(argv: list[str], root: Path) -> list[str]:
    """``argv`` with the checkout's path written as ``{root}`` (so two checkouts record the same)."""
    return [a.replace(str(root), "{root}") for a in argv]


def config_values(root: Path, config: str | None) -> dict[str, Any] | None:
    """The settings in a config file (comments left out), or None."""
    if not config:
        return None
    path = root / "configs" / "train" / config
    try:
        import yaml

        return yaml.safe_load(path.read_text()) or {}
    except ImportError:
        return {"text_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    except OSError as e:
        return {"error": str(e)}


def child_env(root: Path, site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(SET_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(site)])
    return env


def run_one(run: Run, root: Path, workdir: Path, python: str) -> dict[str, Any]:
    """Run ``run`` in ``workdir / run.name`` and hash what it saved."""
    folder = workdir / run.name
    if folder.exists():
        shutil.rmtree(folder)
    site = folder / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(PROBE)
    argv = run_argv(run, root)
    concrete = [a.replace(WORK, str(folder)) for a in argv]
    env = child_env(root, site)
    env["TINY_RUN_PROBE_OUT"] = str(folder / "probe.json")
    command = [python, str(root / "scripts" / run.script), *concrete]
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        rc = subprocess.call(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "label": run.label, "script": run.script, "argv": recorded_argv(argv, root),
        "config": run.config, "config_values": config_values(root, run.config),
        "ended": (f"stopped by --stop-after {run.stop_after} (training state saved, final evaluation skipped)"
                  if run.stop_after is not None else "ran to the end (final weights saved)"),
        "seconds": round(seconds, 1), "returncode": rc}
    problems = []
    if rc != 0:
        problems.append(f"exit status {rc}")
    probe_path = folder / "probe.json"
    probe = json.loads(probe_path.read_text()) if probe_path.is_file() else {}
    modules = probe.get("course_lib", {})
    outside = sorted(f"{name} from {file}" for name, file in modules.items()
                     if file and not Path(file).resolve().is_relative_to(root.resolve()))
    if not modules and rc == 0:
        problems.append("the probe saw no course_lib module (did the sitecustomize probe run?)")
    if outside:
        problems.append(f"imported course_lib from outside {root}: " + "; ".join(outside[:3]))
    package = modules.get("course_lib")
    result["course_lib"] = str(Path(package).resolve()) if package else None
    result["course_lib_modules"] = len(modules)
    result.update({k: probe[k] for k in ("torch", "threads", "cpu_capability") if k in probe})
    if probe.get("threads") not in (None, 1):
        problems.append(f"torch ran with {probe['threads']} threads, not 1")
    files, skipped = digest_folder(folder)
    result["files"], result["skipped_files"] = files, skipped
    if rc == 0 and not any(f["kind"] == "tensors" for f in files.values()):
        problems.append("saved no .safetensors file")
    if problems:
        result["problems"] = problems
        result["log_tail"] = (folder / "log.txt").read_text(errors="replace")[-3000:]
    return result


def tree_listing(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file in the checkout's ``data/`` and ``benchmarks/results/`` (where the
    scripts write by default), except ``__pycache__``."""
    out = {}
    for dirpath, dirnames, filenames in (w for sub in WATCHED for w in os.walk(root / sub)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def git_head(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------- comparing
def compare_file(old: dict[str, Any] | None, new: dict[str, Any] | None) -> tuple[str, str]:
    """(status, why) for one file."""
    if old is None:
        return "NEW", "not in the saved results"
    if new is None:
        return "MISSING", "saved before, not made now"
    if old["sha256"] == new["sha256"]:
        return "same", ""
    if old.get("kind") != "tensors" or new.get("kind") != "tensors":
        return "DIFFERENT", "file bytes differ"
    a, b = old.get("tensors", {}), new.get("tensors", {})
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    gone, added = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if old.get("content_sha256") == new.get("content_sha256") and (gone or added):
        return "DIFFERENT", (f"the same tensors under other names ({len(gone)} name(s) gone, e.g. "
                             f"{', '.join(gone[:2])}; new, e.g. {', '.join(added[:2])})")
    parts = []
    for what, names in (("differ", changed), ("gone", gone), ("new", added)):
        if names:
            parts.append(f"{len(names)} tensor(s) {what}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    return "DIFFERENT", "; ".join(parts) or "tensors differ"


def compare_run(name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[dict[str, str]]:
    """Rows (run, file, sha256, status, why) comparing one run's saved and new results."""
    if new is None:
        return [{"run": name, "file": "-", "sha256": "", "status": "MISSING", "why": "not run now"}]
    rows = []
    notes = []
    if old is not None and old.get("argv") != new.get("argv"):
        notes.append("the run's arguments changed since the save")
    if old is not None and old.get("config_values") != new.get("config_values"):
        before, after = old.get("config_values") or {}, new.get("config_values") or {}
        keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        notes.append(f"its config's values changed ({', '.join(keys)})")
    if new.get("problems"):
        rows.append({"run": name, "file": "-", "sha256": "", "status": "FAILED", "why": "; ".join(new["problems"])})
    old_files = (old or {}).get("files", {})
    new_files = new.get("files", {})
    for rel in sorted(set(old_files) | set(new_files)):
        if old is None:
            status, why = "NEW", "run not in the saved results"
        else:
            status, why = compare_file(old_files.get(rel), new_files.get(rel))
        if status != "same" and notes:
            why = "; ".join([why, *notes]) if why else "; ".join(notes)
        digest = (new_files.get(rel) or old_files.get(rel))["sha256"]
        rows.append({"run": name, "file": rel, "sha256": digest, "status": status, "why": why})
    if old is not None and not old_files and not new_files:
        rows.append({"run": name, "file": "-", "sha256": "", "status": "DIFFERENT", "why": "no files either time"})
    return rows


# ---------------------------------------------------------------------------------------------- main
def print_table(rows: list[dict[str, str]], with_status: bool) -> None:
    width_run = max([len("run")] + [len(r["run"]) for r in rows])
    width_file = max([len("file")] + [len(r["file"]) for r in rows])
    head = f"{'run':{width_run}s}  {'file':{width_file}s}  {'sha256 (tensors: names, dtypes, shapes, bytes)':64s}"
    print(head + ("  status" if with_status else ""))
    for r in rows:
        line = f"{r['run']:{width_run}s}  {r['file']:{width_file}s}  {r['sha256']:64s}"
        if with_status:
            line += f"  {r['status']}" + (f": {r['why']}" if r.get("why") else "")
        elif r.get("status") == "FAILED":
            line += f"  FAILED: {r['why']}"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    names = [r.name for r in RUNS]
    from course_lib.core.cli import HelpFormatter  # the course's --help layout (only this from course_lib)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--root", default=str(THIS_ROOT),
                   help=f"the checkout whose scripts/ and course_lib run (default: {THIS_ROOT})")
    p.add_argument("--scripts", nargs="+", default=None, metavar="NAME",
                   help=f"only these runs: script file names (train_clip.py) or run names ({', '.join(names)})")
    p.add_argument("--save", default=None, metavar="FILE.json", help="write the hashes here")
    p.add_argument("--compare", default=None, metavar="FILE.json",
                   help="compare with hashes saved by --save; exit status 1 on any difference")
    p.add_argument("--workdir", default=None, help="where the runs save (default: a temporary folder, deleted)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each one thread; default 1)")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs the scripts (default: this one)")
    p.add_argument("--list", action="store_true", help="print the runs' commands and stop")
    args = p.parse_args(argv)

    root = Path(args.root).resolve()
    if not (root / "scripts").is_dir() or not (root / "course_lib").is_dir():
        p.error(f"{root} is not a checkout of the course (no scripts/ or course_lib/)")
    chosen = list(RUNS)
    if args.scripts:
        wanted = {Path(s).name for s in args.scripts}
        unknown = wanted - {r.name for r in RUNS} - {r.script for r in RUNS}
        if unknown:
            p.error(f"unknown run(s) {', '.join(sorted(unknown))}; runs: {', '.join(names)}; scripts: "
                    f"{', '.join(sorted({r.script for r in RUNS}))}")
        chosen = [r for r in RUNS if r.name in wanted or r.script in wanted]
    if args.list:
        for r in chosen:
            print(f"{r.name:22s} python scripts/{r.script} {' '.join(recorded_argv(run_argv(r, root), root))}")
        return 0
    saved = None
    if args.compare:
        saved = json.loads(Path(args.compare).read_text())
        if saved.get("format") != FORMAT:
            p.error(f"{args.compare} is not a {FORMAT} file")
    scripts_on_disk = sorted(path.name for path in (root / "scripts").glob("train_*.py"))
    uncovered = sorted(set(scripts_on_disk) - {r.script for r in RUNS})

    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="tiny_run_hashes_"))
    if workdir.is_relative_to(root):
        p.error(f"--workdir {workdir} is inside the checkout {root}: give a folder outside it")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"tiny runs of {root} ({git_head(root) or 'not a git checkout'}) with {args.python}; work folder "
          f"{workdir}", flush=True)
    before = tree_listing(root)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}

    def one(run: Run) -> tuple[Run, dict[str, Any]]:
        return run, run_one(run, root, workdir, args.python)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for run, result in pool.map(one, chosen):
            results[run.name] = result
            status = "FAILED: " + "; ".join(result["problems"]) if result.get("problems") else "ok"
            print(f"  {run.name:22s} {result['seconds']:6.1f} s  {result['ended'].split(' (')[0]:28s} {status}",
                  flush=True)
            if result.get("problems"):
                print("    " + result["log_tail"][-1500:].replace("\n", "\n    "), flush=True)
    wall = time.perf_counter() - start
    after = tree_listing(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    results = {r.name: results[r.name] for r in chosen}  # in RUNS order

    record = {
        "format": FORMAT, "root": str(root), "git_head": git_head(root),
        "command": " ".join(["python benchmarks/tiny_run_hashes.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(wall, 1),
        "python": platform.python_version(), "torch": package_version("torch"),
        "safetensors": package_version("safetensors"), "numpy": package_version("numpy"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs",
        "cpu_capability": next((r["cpu_capability"] for r in results.values() if "cpu_capability" in r), None),
        "env": SET_ENV, "scripts_not_covered": uncovered, "checkout_files_changed": changed, "runs": results}

    rows: list[dict[str, str]] = []
    if saved is not None:
        for name in [r.name for r in chosen]:
            rows += compare_run(name, saved.get("runs", {}).get(name), results.get(name))
        if not args.scripts:
            for name in sorted(set(saved.get("runs", {})) - set(results)):
                rows += compare_run(name, saved["runs"][name], None)
    else:
        for name, result in results.items():
            if result.get("problems"):
                rows.append({"run": name, "file": "-", "sha256": "", "status": "FAILED",
                             "why": "; ".join(result["problems"])})
            for rel, f in result["files"].items():
                rows.append({"run": name, "file": rel, "sha256": f["sha256"], "status": "", "why": ""})
    print()
    print_table(rows, with_status=saved is not None)
    skipped = sorted({Path(s).name if Path(s).name in METADATA_JSON else "NAME.json"
                      for r in results.values() for s in r["skipped_files"]})
    if skipped:
        print(f"\nnot hashed (JSON metadata with timings and commands): {', '.join(skipped)}")
    sources: dict[str, list[str]] = {}
    for name, result in results.items():
        if result.get("course_lib"):
            where = (f"course_lib from {Path(result['course_lib']).parent}, torch {result.get('torch')} "
                     f"({result.get('cpu_capability')}), {result.get('threads')} thread(s)")
            sources.setdefault(where, []).append(name)
    for where, runs in sources.items():
        print(f"{where}: {'every run' if len(runs) == len(results) else ', '.join(runs)}")
    if uncovered:
        print(f"training scripts without a run here: {', '.join(uncovered)}")
    failed = [n for n, r in results.items() if r.get("problems")]
    if changed:
        print(f"\nthe runs changed files in {root}'s {' and '.join(WATCHED)}: {', '.join(changed[:10])}"
              + (" ..." if len(changed) > 10 else ""))
    if saved is not None:
        for key in ("torch", "cpu_capability", "machine"):
            if saved.get(key) != record.get(key):
                print(f"warning: {key} was {saved.get(key)!r} when saved, is {record.get(key)!r} now: float "
                      "kernels may differ")
    if args.save:
        out = Path(args.save)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {out}")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = [r for r in rows if r["status"] not in ("same", "")]
    verdict = (f"{len(results)} run(s) in {wall:.1f} s" + (f"; {len(failed)} FAILED" if failed else "")
               + ("; checkout changed" if changed else ""))
    if saved is not None:
        verdict += "; every file the same" if not bad else f"; {len(bad)} row(s) not the same"
    print(verdict)
    return 1 if failed or changed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
