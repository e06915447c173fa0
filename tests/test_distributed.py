"""Training beyond one CPU (README, "Training bigger"): torchrun on the CPU with the gloo backend.

One launch of ``torchrun --nproc_per_node=2`` (10-30 s, most of it starting Python and torch)
runs ``tests/distributed_worker.py`` in two processes:

1. it calls ``train_diffusion_model`` directly and writes what each process saw and ended with:
   identical weights in both processes, each global batch split between them, the same losses
   and weights as one process with the same global batch, and a training state saved by two
   processes that one process resumes;
2. then the same two processes run ``scripts/train_mnist_diffusion.py``, resuming a state that a
   single-process run of the script saved: only rank 0 prints and saves, and its checkpoint
   matches a single-process run of the script.

A second launch runs ``tests/gan_worker.py``: GANs (alternating D and G updates) under
DistributedDataParallel, identical weights in both processes, the 2-D GAN equal to one process, a
DCGAN (BatchNorm) stopped and resumed under torchrun equal to its uninterrupted run, and then
``scripts/train_gan_vs_diffusion.py --part toy`` in the two processes.

In one process: every training loop with ``checkpoint=`` (``course_lib.train.state.Checkpointing``), stopped
and resumed, ends with the weights of an uninterrupted run; so does a training script
(``train_digit_classifier.py`` with ``--stop-after`` / ``--resume``).

The rest checks the errors in-process: a world size that does not divide the batch, a training
state from another configuration, an incomplete or inconsistent torchrun environment, and config
files with wrong keys or values.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from course_lib.core.checkpoints import CheckpointError, load_weights
from course_lib.diffusion.schedules import make_schedule
from course_lib.train.diffusion import TrainingConfig, load_diffusion_checkpoint, train_diffusion_model
from course_lib.train.distributed import (
    DistributedContext,
    DistributedSetupError,
    check_batch_divisible,
    init_distributed,
    local_slice,
    rank_seed,
    refuse_torchrun,
    resolve_precision,
    torchrun_env,
)
from course_lib.train.gan import train_gan
from course_lib.train.run_config import load_config_file
from course_lib.train.state import Checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_worker as worker  # noqa: E402
import gan_worker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N ARGS`` on the CPU, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", COURSE_NO_PROGRESS="1", COURSE_DEVICE="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def single_process_run(steps: int = worker.STEPS, resume: Path | None = None, **overrides):
    model = worker.Recording(worker.tiny_unet(0))
    config = TrainingConfig(**{**worker.CONFIG.__dict__, "steps": steps, **overrides})
    result = train_diffusion_model(model, worker.batches(worker.toy_data()), make_schedule("linear", 1000), config,
                                   show_progress=False, resume=resume)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in result.ema.state_dict().items()})
    return model, result, state


TINY_SCRIPT = ["--batch-size", "8", "--base-channels", "8", "--lr", "1e-3", "--threads", "1", "--device", "cpu",
               "--name", "tiny"]


def run_script(name: str, argv: list[str]) -> None:
    """A script's ``main(argv)`` in this process."""
    sys.path.insert(0, str(ROOT / "scripts"))
    module = __import__(name)
    module.main(argv)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # one process: 2 steps of the script, saving its training state (the two processes resume it)
    run_script("train_mnist_diffusion", ["--steps", "2", *TINY_SCRIPT, "--folder", str(out / "one"),
                                         "--checkpoint-dir", str(out / "script-state")])
    proc = torchrun("tests/distributed_worker.py", str(out), "scripts/train_mnist_diffusion.py", "--steps", "4",
                    *TINY_SCRIPT, "--folder", str(out / "two"), "--resume", str(out / "script-state"))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    return out, ranks, weights, proc


def test_two_processes_end_with_identical_weights(two_processes):
    _, ranks, weights, _ = two_processes
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert ranks[0]["replica_difference"] == ranks[1]["replica_difference"] == 0.0
    assert ranks[0]["losses"] == ranks[1]["losses"]  # every process reports the global loss


def test_global_batch_is_split_between_the_processes(two_processes):
    _, ranks, _, _ = two_processes
    single, _, _ = single_process_run()
    assert len(single.seen) == worker.STEPS
    for step, whole in enumerate(single.seen):
        first, second = ranks[0]["seen"][step], ranks[1]["seen"][step]
        assert len(first) == len(second) == worker.BATCH // 2
        assert first + second == whole  # rank 0 takes the first half of the global batch, rank 1 the rest


def test_two_processes_match_one_process_with_the_same_global_batch(two_processes):
    _, ranks, weights, _ = two_processes
    _, result, state = single_process_run()
    assert ranks[0]["losses"] == pytest.approx(result.losses, rel=1e-5)
    # float reduction order only (lr 1e-3, 4 AdamW steps): up to 1.1e-5 seen on a CPU with AVX-512 kernels
    assert max_difference(weights[0], state) < 5e-5


def test_state_saved_by_two_processes_resumes_in_one(two_processes):
    out, ranks, weights, _ = two_processes
    assert ranks[0]["start_step"] == 2
    _, resumed, state = single_process_run(resume=out / "state")
    assert resumed.start_step == 2 and resumed.steps == worker.STEPS
    assert resumed.losses == pytest.approx(ranks[0]["losses"], rel=1e-5)
    assert max_difference(state, weights[0]) < 1e-5


def test_resuming_a_state_of_another_configuration_is_a_clear_error(two_processes):
    out, _, _, _ = two_processes
    with pytest.raises(CheckpointError, match=r"different configuration \(training.lr: 0.001 in the checkpoint, "
                                              r"0.002 now\).*without --resume"):
        single_process_run(resume=out / "state", lr=2e-3)
    with pytest.raises(CheckpointError, match="not a training state"):
        single_process_run(resume=out / "nothing-here")


def test_training_script_under_torchrun(two_processes, tmp_path):
    """One process trained 2 steps and saved its state; two processes resumed it to 4; one process does all 4."""
    out, _, _, proc = two_processes
    run_script("train_mnist_diffusion", ["--steps", "4", *TINY_SCRIPT, "--folder", str(tmp_path / "ref")])
    assert proc.stdout.count("saved tiny") == 1 and proc.stdout.count("U-Net:") == 1  # rank 0 alone logs
    assert sorted(p.name for p in (out / "two").iterdir()) == ["manifest.json", "tiny.json", "tiny.safetensors"]
    two = load_diffusion_checkpoint("tiny", folder=out / "two")
    ref = load_diffusion_checkpoint("tiny", folder=tmp_path / "ref")
    assert two.meta["metrics"]["distributed"] == {"world_size": 2, "per_process_batch": 4, "replica_difference": 0.0,
                                                  "resumed_from_step": 2}
    assert two.meta["command"].startswith("torchrun --nproc_per_node=2 scripts/train_mnist_diffusion.py --steps 4")
    assert two.meta["metrics"]["loss_every_50_steps"] == pytest.approx(ref.meta["metrics"]["loss_every_50_steps"],
                                                                       abs=2e-4)
    assert max_difference(two.model.state_dict(), ref.model.state_dict()) < 1e-5


# ------------------------------------------------------------------ GANs under torchrun (alternating updates)
GAN_SCRIPT = ["scripts/train_gan_vs_diffusion.py", "--part", "toy", "--seeds", "1", "--steps", "2"]


@pytest.fixture(scope="module")
def gan_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    proc = torchrun("tests/gan_worker.py", str(out), *GAN_SCRIPT, "--folder", str(out / "script"))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    return out, ranks, weights, proc


def test_gan_processes_end_with_identical_weights(gan_processes):
    _, ranks, weights, _ = gan_processes
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # BatchNorm statistics included
    assert all(r[run]["replica_difference"] == 0.0 for r in ranks for run in ("toy", "dcgan", "resumed"))
    assert ranks[0]["toy"] == ranks[1]["toy"] and ranks[0]["dcgan"] == ranks[1]["dcgan"]  # global losses


def test_gan_without_batchnorm_matches_one_process(gan_processes):
    """Each process trains on its slice of the global batch: together they are the single-process run."""
    _, ranks, weights, _ = gan_processes
    single, history = gan_worker.train_toy()
    assert max_difference({k: v for k, v in weights[0].items() if k.startswith("toy.")}, single) < 1e-5
    assert ranks[0]["toy"]["loss_d"] == pytest.approx(history.loss_d, rel=1e-5)
    assert ranks[0]["toy"]["loss_g"] == pytest.approx(history.loss_g, rel=1e-5)


def test_gan_stopped_and_resumed_under_torchrun_is_the_uninterrupted_run(gan_processes):
    out, ranks, weights, _ = gan_processes
    assert ranks[0]["stopped_at"] == gan_worker.STEPS // 2 == ranks[0]["resumed"]["start_step"]
    assert ranks[0]["resumed"]["loss_d"] == ranks[0]["dcgan"]["loss_d"]
    for w in weights:
        dcgan = {k[len("dcgan."):]: v for k, v in w.items() if k.startswith("dcgan.")}
        resumed = {k[len("resumed."):]: v for k, v in w.items() if k.startswith("resumed.")}
        assert dcgan.keys() == resumed.keys() and all(torch.equal(dcgan[k], resumed[k]) for k in dcgan)
    # the state two processes saved resumes in one (which then normalises by the whole batch)
    G, D = gan_worker.dcgan_nets(seed=99)
    checkpoint = Checkpointing(resume=out / "dcgan-state")
    history = train_gan(G, D, gan_worker.digits(), gan_worker.DCGAN, show_progress=False, checkpoint=checkpoint)
    assert history.start_step == 2 and len(history.loss_d) == gan_worker.STEPS
    assert history.loss_d[:2] == ranks[0]["dcgan"]["loss_d"][:2]


def test_gan_script_under_torchrun(gan_processes, tmp_path):
    out, _, _, proc = gan_processes
    run_script("train_gan_vs_diffusion", [*GAN_SCRIPT[1:], "--folder", str(tmp_path)])
    assert proc.stdout.count("ring8 seed 0:") == 1 and proc.stdout.count("grid25 seed 0:") == 1  # rank 0 alone logs
    assert sorted(p.name for p in (out / "script").iterdir()) == ["manifest.json", "toy_gan_vs_diffusion.json",
                                                                 "toy_gan_vs_diffusion.safetensors"]
    two, meta = load_weights("toy_gan_vs_diffusion", folder=out / "script")
    one, _ = load_weights("toy_gan_vs_diffusion", folder=tmp_path)
    assert meta["command"] == ("torchrun --nproc_per_node=2 scripts/train_gan_vs_diffusion.py --part toy --seeds 1 "
                               "--steps 2")
    assert meta["metrics"]["distributed"] == {"world_size": 2, "per_process_batch": 128, "replica_difference": 0.0,
                                              "resumed_from_step": [0, 0, 0, 0]}
    assert max_difference(two, one) < 1e-5  # the 2-D GANs and diffusion models: the single-process run


# ------------------------------------------------------------------------ stopping and resuming, one process
def _digits_subset():
    from course_lib.worlds.mnist import MNIST5k

    train = MNIST5k("train")
    return train.images[:600], train.labels[:600]


def _trainers():
    """name -> (build a model, train it with a checkpoint, step to stop at): tiny runs of every loop."""
    from course_lib.evaluate.classifiers import AttributeNet, DigitClassifier
    from course_lib.models.segmentation import (
        SegmentationUNet,
        SegmentationUNetConfig,
    )
    from course_lib.models.vae import AutoencoderConfig, AutoencoderKL
    from course_lib.train import toy_diffusion
    from course_lib.train.autoencoder import AutoencoderTrainingConfig, train_autoencoder
    from course_lib.train.clip import (
        ClipTrainingConfig,
        build_clip_model,
        clip_model_config,
        init_clip_weights,
        load_shipped_tokenizer,
        train_contrastive,
    )
    from course_lib.train.judges import train_attribute_net, train_digit_classifier
    from course_lib.train.segmentation import shapeworld_segmentation_data, train_segmenter

    class Pair(torch.nn.Module):
        def __init__(self, G, D):
            super().__init__()
            self.G, self.D = G, D

    def digits(model, checkpoint):
        images, labels = _digits_subset()
        return train_digit_classifier(images, labels, epochs=2, batch_size=128, model=model, checkpoint=checkpoint)[1]

    def segmenter(model, checkpoint):
        images, masks = shapeworld_segmentation_data(32, seed=0)
        history = train_segmenter(model, images, masks, steps=6, batch_size=8, eval_every=2,
                                  eval_data=shapeworld_segmentation_data(8, seed=1), checkpoint=checkpoint)
        return history.losses, history.eval_steps, history.eval_miou

    def clip(model, checkpoint):
        config = ClipTrainingConfig(steps=4, batch_size=8, warmup=1)
        return train_contrastive(model, load_shipped_tokenizer(), config, checkpoint=checkpoint).loss

    def toy_diffusion_run(model, checkpoint):
        config = toy_diffusion.DiffusionTrainConfig(steps=5, batch_size=16, lr=3e-3, warmup_steps=2, ema_decay=0.9)
        history = toy_diffusion.train_diffusion(model, gan_worker.ring, toy_diffusion.toy_schedule(), config,
                                                show_progress=False, checkpoint=checkpoint)
        return history.losses, [v.tolist() for v in history.ema.state_dict().values()]

    tokenizer_config = clip_model_config(load_shipped_tokenizer(), width=16, layers=1, image_widths=[8, 8, 8],
                                         embed_dim=8)
    vae_config = AutoencoderConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    vae_training = AutoencoderTrainingConfig(steps=6, batch_size=4, chunk_size=8)
    return {
        # dropout (the global random state), OneCycle over both epochs, stopped within the second epoch
        "digit_classifier": (lambda: DigitClassifier(width=4, feature_dim=8), digits, 7),
        "attribute_net": (lambda: AttributeNet(width=4),
                          lambda m, c: train_attribute_net(48, 2, batch_size=16, model=m, checkpoint=c)[1], 4),
        "segmenter": (lambda: SegmentationUNet(SegmentationUNetConfig(base_channels=4)), segmenter, 3),
        # chunks of 8 images, 4 per step: stopped within a chunk; posterior samples (global random state)
        "autoencoder": (lambda: AutoencoderKL(vae_config),
                        lambda m, c: train_autoencoder(m, vae_training, checkpoint=c).loss, 3),
        "clip": (lambda: init_clip_weights(build_clip_model(**tokenizer_config)), clip, 2),
        "gan": (lambda: Pair(*gan_worker.toy_nets()),
                lambda m, c: train_gan(m.G, m.D, gan_worker.ring, gan_worker.TOY, show_progress=False,
                                           checkpoint=c).loss_d, 2),
        "dcgan": (lambda: Pair(*gan_worker.dcgan_nets()),
                  lambda m, c: train_gan(m.G, m.D, gan_worker.digits(), gan_worker.DCGAN, show_progress=False,
                                             checkpoint=c).loss_d, 2),
        "toy_diffusion": (lambda: toy_diffusion.MLPDenoiser(toy_diffusion.MLPDenoiserConfig(hidden=16, layers=2)),
                          toy_diffusion_run, 2),
    }


@pytest.mark.parametrize("name", ["digit_classifier", "attribute_net", "segmenter", "autoencoder", "clip", "gan",
                                  "dcgan", "toy_diffusion"])
def test_stopped_and_resumed_training_loop_equals_the_uninterrupted_run(name, tmp_path):
    build, train, stop = _trainers()[name]
    torch.manual_seed(0)
    uninterrupted = build()
    history = train(uninterrupted, None)
    torch.manual_seed(0)
    first = Checkpointing(tmp_path / "state", stop_after=stop)
    train(build(), first)
    assert first.stopped_at == stop and (tmp_path / "state" / "training_state.json").is_file()
    torch.manual_seed(1)  # another initialisation and global random state: the resume must replace them
    resumed = build()
    second = Checkpointing(tmp_path / "end", resume=tmp_path / "state")
    assert train(resumed, second) == history and second.start_step == stop and second.stopped_at is None
    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


DIGITS = ["--epochs", "2", "--batch-size", "2250", "--width", "4", "--feature-dim", "8", "--device", "cpu"]


def test_stopped_and_resumed_script_equals_the_uninterrupted_run(tmp_path, capsys):
    """train_digit_classifier.py: 2 epochs of 2 batches (one-cycle schedule over all 4, dropout), stopped after
    the 3rd batch (within the second epoch) and resumed: the very weights of the uninterrupted run."""
    run_script("train_digit_classifier", [*DIGITS, "--folder", str(tmp_path / "full")])
    run_script("train_digit_classifier", [*DIGITS, "--folder", str(tmp_path / "part"), "--stop-after", "3",
                                          "--checkpoint-dir", str(tmp_path / "state")])
    assert f"stopped the run at step 3 of 4 (--stop-after); its training state is in {tmp_path / 'state'}" \
        in capsys.readouterr().out
    assert not (tmp_path / "part").exists()  # a stopped run ships nothing
    run_script("train_digit_classifier", [*DIGITS, "--folder", str(tmp_path / "resumed"), "--resume",
                                          str(tmp_path / "state")])
    full, full_meta = load_weights("digit_classifier", folder=tmp_path / "full")
    resumed, meta = load_weights("digit_classifier", folder=tmp_path / "resumed")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert meta["metrics"]["resumed_from_step"] == 3
    assert meta["metrics"]["final_loss"] == full_meta["metrics"]["final_loss"]
    with pytest.raises(CheckpointError, match=r"different configuration \(settings.lr: 0.002 in the checkpoint, "
                                              r"0.001 now\).*without --resume"):
        run_script("train_digit_classifier", [*DIGITS, "--lr", "1e-3", "--resume", str(tmp_path / "state")])
    with pytest.raises(CheckpointError, match=r"model.config.width: 4 in the checkpoint, 8 now"):
        run_script("train_digit_classifier", [*DIGITS, "--width", "8", "--resume", str(tmp_path / "state")])


def test_checkpointing_errors(tmp_path):
    with pytest.raises(ValueError, match="--stop-after needs --checkpoint-dir"):
        Checkpointing(stop_after=3)
    with pytest.raises(ValueError, match="--checkpoint-every needs --checkpoint-dir"):
        Checkpointing(checkpoint_every=3)
    with pytest.raises(ValueError, match="stop_after must be a positive int"):
        Checkpointing(tmp_path, stop_after=0)
    with pytest.raises(CheckpointError, match=r"holds no training state of this run; expected subfolders "
                                              r"segmentation_unet, segmentation_unet_no_skip"):
        Checkpointing(resume=tmp_path).parts(["segmentation_unet", "segmentation_unet_no_skip"])
    with pytest.raises(CheckpointError, match="not a training state"):  # a GAN resumed from nothing
        train_gan(*gan_worker.toy_nets(), gan_worker.ring, gan_worker.TOY, show_progress=False,
                      checkpoint=Checkpointing(resume=tmp_path / "nothing-here"))


# ----------------------------------------------------------------------------------------------- errors


def test_world_size_that_does_not_divide_the_batch():
    ctx = DistributedContext(rank=0, world_size=3, backend="gloo")  # checked before any communication
    with pytest.raises(ValueError, match=r"batch_size=8 \(the global batch\) cannot be split evenly over 3 "
                                         r"processes; use a batch_size divisible by 3 \(e.g. 6 or 9\)"):
        train_diffusion_model(worker.tiny_unet(), worker.toy_data(), make_schedule("linear", 1000),
                              TrainingConfig(steps=1, batch_size=8), distributed=ctx)
    assert check_batch_divisible(8, 2) == 4


def test_incomplete_or_inconsistent_torchrun_environment(monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None and init_distributed("cpu").world_size == 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match=r"MASTER_ADDR, MASTER_PORT are not set.*torchrun --nproc_per_node"):
        init_distributed("cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedSetupError, match=r"RANK=2 does not fit WORLD_SIZE=2"):
        torchrun_env()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DistributedSetupError, match=r"train_clip.py trains in one process only.*plain `python`"):
        refuse_torchrun("train_clip.py", ("train_mnist_diffusion.py",))


def test_world_size_larger_than_the_processes_started(monkeypatch):
    """WORLD_SIZE=2 but only this process starts: a clear error after the rendezvous timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DistributedSetupError, match=r"process 0 of WORLD_SIZE=2 could not join the others.*"
                                                    r"COURSE_DIST_TIMEOUT"):
        init_distributed("cpu", timeout_s=1)
    assert not torch.distributed.is_initialized()


def test_helpers():
    assert [local_slice(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert rank_seed(5, 0) == 5 and len({rank_seed(5, r) for r in range(8)}) == 8
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        resolve_precision("fp16", "cpu")


def test_every_shipped_config_is_accepted_by_its_script(capsys):
    configs = sorted((ROOT / "configs" / "train").rglob("*.yaml"))
    assert configs
    for path in configs:
        settings = load_config_file(path)
        script = ROOT / "scripts" / settings["script"]
        assert script.is_file(), f"{path.name} names {settings['script']}, which does not exist"
        # --help parses the file (unknown keys and bad values are errors) and stops before training
        with pytest.raises(SystemExit) as stop:
            run_script(script.stem, ["--config", str(path), "--help"])
        assert stop.value.code == 0, f"{path.name}: {capsys.readouterr().err[-2000:]}"


@pytest.mark.parametrize("text, message", [
    ("script: train_mnist_diffusion.py\nbase_chanels: 32\n",
     r"unknown setting 'base_chanels'.*known settings:.*base_channels"),
    ("steps: many\n", r"steps: must be an integer, got 'many'"),
    ("prediction-type: noise\n", r"prediction-type: must be one of epsilon, v_prediction, got 'noise'"),
    ("script: train_clip.py\n", r"is a config for train_clip.py, not for train_mnist_diffusion.py"),
])
def test_config_file_errors(tmp_path, capsys, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SystemExit) as stop:
        run_script("train_mnist_diffusion", ["--config", str(tmp_path / "bad.yaml")])
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_config_file_values_and_flags_on_top(tmp_path, monkeypatch):
    """The file replaces the defaults; a flag on the command line replaces the file."""
    import argparse

    from course_lib.train.run_config import parse_args

    (tmp_path / "c.yaml").write_text("steps: 10\nlr: 1e-3\nchannels: [8, 16]\nflag: true\n")
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--channels", type=int, nargs="+", default=[4])
    p.add_argument("--flag", action="store_true")
    args = parse_args(p, ["--config", str(tmp_path / "c.yaml"), "--steps", "20"])
    assert (args.steps, args.lr, args.channels, args.flag) == (20, 1e-3, [8, 16], True)
