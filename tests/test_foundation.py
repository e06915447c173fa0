"""Device choice, seeding, plotting and the checkpoint store (notebook 00)."""

import json

import numpy as np
import pytest
import torch

from course_lib.core.checkpoints import CheckpointError, load_checkpoint, read_manifest, save_checkpoint
from course_lib.core.plotting import image_grid
from course_lib.core.utils import get_device, seed_everything


def test_device_defaults_to_best_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert get_device().type == expected
    assert get_device("cpu").type == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device().type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_missing_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        get_device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    import random

    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    with pytest.raises(ValueError, match="non-negative"):
        seed_everything(-1)


def test_image_grid_uses_make_grid_layout():
    x = torch.linspace(-1, 1, 6 * 3 * 4 * 4).reshape(6, 3, 4, 4)
    grid = image_grid(x, nrow=3, padding=2)
    assert grid.shape == (2 * 4 + 3 * 2, 3 * 4 + 4 * 2, 3)  # 2 rows, 3 cols, padding 2
    assert grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(TypeError, match="uint8"):
        image_grid(np.zeros((2, 4, 4, 3), dtype=np.float32))


class Tiny(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(3, width)


def test_checkpoint_round_trip_and_manifest(tmp_path):
    model = Tiny(5)
    save_checkpoint(model, "tiny", config={"width": 5}, folder=tmp_path, command="made in a test")
    manifest = read_manifest(tmp_path)
    assert manifest["tiny"]["command"] == "made in a test" and len(manifest["tiny"]["sha256"]) == 64
    loaded = load_checkpoint("tiny", Tiny, folder=tmp_path)  # rebuilt from the saved config
    torch.testing.assert_close(loaded.lin.weight, model.lin.weight, rtol=0, atol=0)


def test_checkpoint_errors_say_what_is_wrong(tmp_path):
    save_checkpoint(Tiny(5), "tiny", config={"width": 5}, folder=tmp_path)
    with pytest.raises(CheckpointError, match="known checkpoints: tiny"):
        load_checkpoint("nope", Tiny, folder=tmp_path)
    with pytest.raises(CheckpointError, match=r"lin.weight: checkpoint \(5, 3\) vs model \(7, 3\)"):
        load_checkpoint("tiny", Tiny(7), folder=tmp_path)
    with pytest.raises(CheckpointError, match="cannot build"):
        load_checkpoint("tiny", torch.nn.Linear, folder=tmp_path)
    weights = tmp_path / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint("tiny", Tiny, folder=tmp_path)


def test_checksum_errors_say_which_file_changed(tmp_path, monkeypatch):
    """A tampered manifest is named as such (not "restore the weights"); a truncated file whose
    checksum was updated says it is not readable safetensors."""
    import json

    from course_lib.core import checkpoints

    save_checkpoint(Tiny(5), "tiny", config={"width": 5}, folder=tmp_path)
    manifest_path = tmp_path / "manifest.json"
    good = json.loads(manifest_path.read_text())
    committed = good["tiny"]["sha256"]
    tampered = {**good, "tiny": {**good["tiny"], "sha256": "0" * 64}}
    manifest_path.write_text(json.dumps(tampered))
    monkeypatch.setattr(checkpoints, "_committed_sha256", lambda folder, name: committed)   # git HEAD's entry
    with pytest.raises(CheckpointError, match="the weights are the committed ones, so the manifest changed") as err:
        load_checkpoint("tiny", Tiny, folder=tmp_path)
    assert "git checkout -- " in str(err.value) and "manifest.json" in str(err.value)
    assert "Restore it with `git checkout -- " + str(tmp_path / "tiny.safetensors") not in str(err.value)
    monkeypatch.setattr(checkpoints, "_committed_sha256", lambda folder, name: None)         # no git
    with pytest.raises(CheckpointError, match="either the weights file or the manifest's entry for 'tiny' changed"):
        load_checkpoint("tiny", Tiny, folder=tmp_path)
    manifest_path.write_text(json.dumps(good))
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])                                           # truncated...
    good["tiny"]["sha256"] = checkpoints.sha256_of(weights)                                  # ...checksum updated
    manifest_path.write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors matches its checksum .* not a readable safetensors"):
        load_checkpoint("tiny", Tiny, folder=tmp_path)


def test_committed_checksums_are_read_from_git():
    from course_lib.core.checkpoints import _committed_sha256
    from course_lib.core.paths import data_dir

    sha = _committed_sha256(data_dir(), "shapeworld_vae")
    if sha is None:
        pytest.skip("not a git checkout")
    assert len(sha) == 64 and _committed_sha256(data_dir(), "no such checkpoint") is None


def test_shipped_manifest_matches_files():
    """Every shipped checkpoint's file has the checksum the manifest records."""
    from course_lib.core.checkpoints import sha256_of
    from course_lib.core.paths import data_dir

    manifest = read_manifest()
    assert {"digit_classifier", "shapeworld_attribute_net"} <= set(manifest)
    for name, entry in manifest.items():
        assert sha256_of(data_dir() / entry["weights"]) == entry["sha256"], name
        meta = json.loads((data_dir() / entry["config"]).read_text())
        assert meta["command"].startswith("python scripts/"), f"{name} does not say how it was made"
