"""benchmarks/gpu_check.py (issue 15): its CPU dry run, every part, and the helpers its verdicts rest on.

The dry run (``--device cpu --dry-run``) trains every training script for a few steps in fp32 and bf16,
stops and resumes one, runs torchrun with the gloo backend, samples the shipped pipeline and times the
course's pipeline against diffusers' at a tiny size: about 40 s on two busy cores, one thread.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "dry.json"
    env = {k: v for k, v in os.environ.items() if k not in gpu_check.TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", COURSE_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--dry-run",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"dry run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def test_every_part_runs_and_passes(dry_run):
    result, stdout = dry_run
    assert result["ok"] and result["failures"] == [] and result["dry_run"] and result["device"] == "cpu"
    assert list(result["parts"]) == list(gpu_check.PARTS)
    assert all(part["status"] == "ok" for part in result["parts"].values()), result["parts"]
    assert "every check passed" in stdout and "part      what" in stdout  # the printed table
    assert 0 < result["wall_seconds"] < 300


def test_every_script_trains_in_fp32_and_bf16_with_finite_losses(dry_run):
    result, _ = dry_run
    rows = {(r["script"], r["precision"]): r for r in result["parts"]["train"]["rows"]}
    scripts = {s.name for s in (ROOT / "scripts").glob("train_*.py")}
    assert {s for s, _ in rows} == scripts - set(gpu_check.CPU_ONLY_SCRIPTS)  # no script left out unnamed
    assert set(gpu_check.CPU_ONLY_SCRIPTS) <= scripts
    assert set(rows) == {(s.script, p) for s in gpu_check.SCRIPTS for p in gpu_check.PRECISIONS}
    for (script, precision), row in rows.items():
        if precision == "fp32" or (precision == "bf16" and script != "train_gan_vs_diffusion.py"):
            assert row["status"] == "ok", row
            assert row["finite"] and row["steps"] >= 4, row
            assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"]), row
        else:
            assert row["status"] == "skipped", row
    # bf16 autocast really ran: the same run in bf16 has other losses than in fp32
    for spec in gpu_check.SCRIPTS:
        if spec.precision_flag:
            fp32, bf16 = rows[spec.script, "fp32"], rows[spec.script, "bf16"]
            assert (fp32["loss_first"], fp32["loss_last"]) != (bf16["loss_first"], bf16["loss_last"]), spec.script


def test_nothing_is_skipped_silently(dry_run):
    result, stdout = dry_run
    reasons = {s["what"]: s["why"] for s in result["skipped"]}
    for row in result["parts"]["train"]["rows"]:
        if row["status"] == "skipped":
            what = f"train {row['script']} {row['precision']}"
            assert reasons[what] == row["why"] and what in stdout
    fp16 = [r for r in result["parts"]["train"]["rows"] if r["precision"] == "fp16"]
    assert fp16 and all("fp16 autocast is for CUDA GPUs" in r["why"] for r in fp16)
    assert "no --precision flag" in reasons["train train_gan_vs_diffusion.py bf16"]
    assert "speed bf16 and fp16 rows" in reasons


def test_stopped_and_resumed_run_is_exactly_the_uninterrupted_one(dry_run):
    part = dry_run[0]["parts"]["resume"]
    assert part["exact"] and part["stopped_at"] < part["total_steps"] and part["stopped_run_shipped"] == []
    resumed = part["resumed_vs_uninterrupted"]
    assert resumed["max_abs_difference"] == 0.0 and resumed["sha256"][0] == resumed["sha256"][1]
    assert part["control_vs_uninterrupted"]["identical"]


def test_torchrun_one_process_with_gloo_equals_the_plain_run(dry_run):
    part = dry_run[0]["parts"]["torchrun"]
    assert part["backend"] == "gloo" and part["world_size"] == 1 and part["all_reduce"] == 1.0
    assert part["vs_single_process"]["identical"] and part["vs_single_process"]["max_abs_difference"] == 0.0


def test_sampling_and_speed(dry_run):
    result, _ = dry_run
    rows = {r["precision"]: r for r in result["parts"]["sample"]["rows"]}
    assert rows["fp32"]["max_abs_difference"] == 0.0  # the CPU against itself
    assert 0 < rows["bf16"]["mean_abs_difference"] < gpu_check.SAMPLE_TOLERANCE["bf16"] and rows["bf16"]["finite"]
    speed = result["parts"]["speed"]
    assert speed["steps"] == 20 and speed["sampler"] == "dpm-solver++"
    (row,) = speed["rows"]
    assert row["what"] == "pipeline, fp32" and row["ratio"] > 0 and row["course_images_finite"]
    assert row["max_abs_image_difference"] < 1e-4  # the same weights give the same image in both pipelines


def test_loss_summary():
    falling = gpu_check.loss_summary([3.0, 2.5, 2.0, 1.5, 1.0])
    assert falling["falls"] and falling["finite"] and falling["loss_first"] == 3.0 and falling["loss_last"] == 1.0
    assert not gpu_check.loss_summary([1.0, 1.0, 2.0])["falls"]
    broken = gpu_check.loss_summary([3.0, float("nan"), 1.0])
    assert not broken["finite"] and not broken["falls"]
    assert not gpu_check.loss_summary([])["finite"]


def test_compare_weights_sees_one_rounding_step(tmp_path):
    a = {"w": torch.randn(4, 4), "b": torch.zeros(3)}
    save_file(a, str(tmp_path / "a.safetensors"), metadata={"run": "one"})
    save_file({k: v.clone() for k, v in a.items()}, str(tmp_path / "b.safetensors"), metadata={"run": "two"})
    same = gpu_check.compare_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert same["identical"] and same["max_abs_difference"] == 0.0  # metadata is not the weights
    nudged = {k: v.clone() for k, v in a.items()}
    nudged["w"][2, 3] = torch.nextafter(nudged["w"][2, 3], torch.tensor(math.inf))
    save_file(nudged, str(tmp_path / "c.safetensors"))
    differ = gpu_check.compare_weights(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    assert not differ["identical"] and 0 < differ["max_abs_difference"] < 1e-5
    assert differ["sha256"][0] != differ["sha256"][1]


def test_state_losses_reads_both_state_formats(tmp_path):
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "diffusion" / "training_state.json").write_text(json.dumps({"losses": [1.0, 0.5]}))
    assert gpu_check.state_losses(tmp_path / "diffusion") == ([1.0, 0.5], "diffusion: losses")
    (tmp_path / "gan" / "part").mkdir(parents=True)
    (tmp_path / "gan" / "part" / "training_state.json").write_text(json.dumps({"loop": {"loss_d": [2.0]}}))
    assert gpu_check.state_losses(tmp_path / "gan") == ([2.0], "part: loop.loss_d")
    with pytest.raises(FileNotFoundError):
        gpu_check.state_losses(tmp_path / "nothing")
