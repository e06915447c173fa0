"""The text-to-image pipeline, its SD-style config, guidance, styles and the command line.

Most tests use the shipped autoencoder and text encoder with a *random* U-Net (built from the
shipped config without its weights), so they check the plumbing, not image quality; the shipped
model's quality is measured in tests/test_t2i_shipped.py and notebook 10.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.diffusion.guidance import STYLES, apply_style, guided_model_fn
from course_lib.models.tokenizer import PromptTruncatedWarning
from course_lib.pipeline.config import (
    SHIPPED_CONFIG,
    ConfigError,
    ConfigMismatchWarning,
    build_from_config,
    instantiate_from_config,
    load_config,
)
from course_lib.pipeline.text_to_image import GenerationSettings

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = load_config(SHIPPED_CONFIG)
    del cfg["model"]["params"]["unet_config"]["params"]["ckpt_path"]   # random U-Net: plumbing only
    return cfg


@pytest.fixture(scope="module")
def pipe(config):
    torch.manual_seed(0)
    with pytest.warns(ConfigMismatchWarning, match="unet_config.params.ckpt_path is missing"):
        return build_from_config(config, strict=False)


def test_config_mirrors_stable_diffusion_keys(config):
    params = config["model"]["params"]
    for key in ("linear_start", "linear_end", "timesteps", "image_size", "channels", "conditioning_key",
                "scale_factor", "unet_config", "first_stage_config", "cond_stage_config"):
        assert key in params
    unet = params["unet_config"]["params"]
    for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_head_channels",
                "use_linear_in_transformer", "context_dim", "use_bf16"):
        assert key in unet


def test_config_builds_the_shipped_parts(pipe):
    from course_lib.train.autoencoder import load_shipped_autoencoder

    vae = load_shipped_autoencoder()
    assert pipe.vae.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    for a, b in zip(pipe.vae.state_dict().values(), vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert pipe.schedule.name == "scaled_linear" and pipe.schedule.params["beta_start"] == 0.00085
    assert pipe.latent_shape == (4, 8, 8)
    assert pipe.unet.config.attention_levels == (0, 1, 2)


def test_images_shape_range_and_same_seed_same_image(pipe):
    out = pipe([PROMPT, "two green squares"], steps=3, seed=5, show_progress=False)
    assert out.images.shape == (2, 3, 32, 32) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.seeds == [5, 6] and out.model_calls == 3
    again = pipe([PROMPT, "two green squares"], steps=3, seed=5, show_progress=False)
    assert torch.equal(out.images, again.images)                   # same call, same images, bit for bit
    alone = pipe("two green squares", steps=3, seed=6, show_progress=False)
    torch.testing.assert_close(alone.images[0], out.images[1], atol=1e-5, rtol=0)  # image 1 remade alone
    other = pipe("two green squares", steps=3, seed=7, show_progress=False)
    assert (other.images[0] - alone.images[0]).abs().max() > 1e-2


def test_images_per_prompt_and_save(pipe, tmp_path):
    out = pipe(PROMPT, steps=2, images_per_prompt=3, show_progress=False)
    assert len(out.images) == 3 and out.prompts == [PROMPT] * 3
    assert len({round(float(x.sum()), 4) for x in out.images}) == 3
    path = out.save(tmp_path / "grid.png")
    from PIL import Image

    assert Image.open(path).size[0] > 32 * 3
    assert len(out.pil_images()) == 3


def test_guidance_is_the_cfg_formula():
    calls = []

    def unet(x, t, ctx):
        calls.append(len(x))
        return x * 0 + ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    cond, uncond = torch.full((2, 3, 4), 2.0), torch.full((2, 3, 4), 0.5)
    x, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    out = guided_model_fn(unet, cond, uncond, 3.0)(x, t)
    assert torch.allclose(out, torch.full_like(out, 0.5 + 3.0 * (2.0 - 0.5)))
    assert calls == [4]                                               # one batch of 2B
    out1 = guided_model_fn(unet, cond, uncond, 1.0)(x, t)
    assert torch.allclose(out1, torch.full_like(out1, 2.0)) and calls[-1] == 2   # scale 1: no uncond half
    out0 = guided_model_fn(unet, cond, uncond, 0.0)(x, t)
    assert torch.allclose(out0, torch.full_like(out0, 0.5))         # scale 0: unconditional


def test_empty_prompt_is_unconditional(pipe):
    a = pipe("", steps=3, guidance_scale=7.0, show_progress=False)
    b = pipe("", steps=3, guidance_scale=1.0, show_progress=False)
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=0)   # cond == uncond: guidance has no effect


def test_negative_prompt_changes_the_image(pipe):
    a = pipe(PROMPT, steps=3, show_progress=False)
    b = pipe(PROMPT, steps=3, negative_prompt="a blue square", show_progress=False)
    assert b.negative_prompts == ["a blue square"]
    assert (a.images - b.images).abs().max() > 1e-3


def test_styles_are_the_fooocus_templates():
    p, n = apply_style("a dog", "", "cinematic-default")
    assert p.startswith("cinematic still a dog . emotional") and n.startswith("anime, cartoon")
    p, n = apply_style("a hare", "blurry", "sai-fantasy art")
    assert p.startswith("ethereal fantasy concept art of a hare .") and n.startswith("blurry, photographic")
    assert apply_style("a cat", "x", "none") == ("a cat", "x")
    assert apply_style("", "", "cinematic-default")[0] == ""          # empty stays unconditional
    assert set(STYLES) >= {"none", "cinematic-default", "sai-fantasy art"}


def test_long_prompt_is_truncated_with_a_warning(pipe):
    with pytest.warns(PromptTruncatedWarning, match="dropped"):
        out = pipe("a red circle " * 40, steps=1, show_progress=False)
    assert len(out.images) == 1


@pytest.mark.parametrize("bad, match", [
    ({"sampler": "pplm"}, "available samplers: ddpm, ddim, plms"),
    ({"steps": 0}, "steps must be an int from 1"),
    ({"guidance_scale": -1.0}, "guidance scale must be a finite number >= 0"),
    ({"style": "anime"}, "available styles"),
    ({"seed": -1}, "seed must be an int >= 0"),
])
def test_bad_settings_are_clear_errors(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPT, **bad)


def test_unknown_setting_and_bad_latents(pipe):
    with pytest.raises(TypeError, match="unknown setting"):
        pipe(PROMPT, cfg_scale=3)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(PROMPT, latents=torch.zeros(1, 4, 16, 16))


def test_config_errors_say_what_to_fix(config):
    c = copy.deepcopy(config)
    del c["model"]["params"]["first_stage_config"]["params"]["embed_dim"]
    with pytest.raises(ConfigError, match="first_stage_config.params is missing 'embed_dim'"):
        build_from_config(c)
    c = copy.deepcopy(config)
    del c["model"]["params"]["unet_config"]["target"]
    with pytest.raises(ConfigError, match="unet_config needs a 'target'"):
        build_from_config(c)
    c = copy.deepcopy(config)
    c["model"]["params"]["unet_config"]["params"]["model_chanels"] = 32
    with pytest.raises(ConfigError, match="unknown key"):
        build_from_config(c)
    c = copy.deepcopy(config)
    c["model"]["params"]["unet_config"]["params"]["context_dim"] = 128
    with pytest.raises(ConfigError, match="do not fit together"):
        build_from_config(c, strict=False)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such.yaml")
    with pytest.raises(ConfigError, match="cannot be imported"):
        instantiate_from_config({"target": "course_lib.nothing.Here", "params": {}})


def test_weights_that_do_not_fit_the_config_are_a_clear_error(config):
    c = copy.deepcopy(config)
    c["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch"] = 32
    with pytest.raises(CheckpointError, match="does not fit"):
        build_from_config(c)


def test_bf16_runs_the_unet_in_bfloat16_and_stays_close(config, pipe):
    with pytest.warns(ConfigMismatchWarning):
        pipe16 = build_from_config(config, use_bf16=True, strict=False)
    pipe16.unet.load_state_dict(pipe.unet.state_dict())
    assert next(pipe16.unet.parameters()).dtype == torch.bfloat16 and pipe16.use_bf16
    a = pipe(PROMPT, steps=4, show_progress=False)
    b = pipe16(PROMPT, steps=4, show_progress=False)
    assert b.images.dtype == torch.float32
    diff = (a.images - b.images).abs().max().item()
    assert 0 < diff < 0.1


def test_settings_validate_alone():
    GenerationSettings().validate()
    with pytest.raises(ValueError, match="images_per_prompt"):
        GenerationSettings(images_per_prompt=0).validate()


def test_command_line_errors(capsys):
    from course_lib.generate import main

    assert main([PROMPT, "--steps", "0"]) == 2
    assert "steps must be an int" in capsys.readouterr().err
    assert main([PROMPT, "--guidance", "-2"]) == 2
    assert "guidance scale" in capsys.readouterr().err
    assert main([PROMPT, "--config", "nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([PROMPT, "--sampler", "pplm"])                          # argparse lists the choices
    assert "invalid choice" in capsys.readouterr().err


def test_no_warnings_for_a_normal_prompt(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(PROMPT, steps=1, show_progress=False)


# ------------------------------------------------------------------------------------------------
# Issue 17: the config against its checkpoints; clear errors on the command line
# ------------------------------------------------------------------------------------------------

def shipped(**edits) -> dict:
    """The shipped config (weights named) with ``edits``: "a.b.c" paths under model.params -> value or DELETE."""
    cfg = load_config(SHIPPED_CONFIG)
    for path, value in edits.items():
        *parents, key = path.split("__")
        node = cfg["model"]["params"]
        for name in parents:
            node = node[name]
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return cfg


DELETE = object()
MISMATCHES = {  # edit -> what the error must say
    "unet_config__params__norm_num_groups": (8, "unet_config: norm_num_groups is 8 here but 16 in the checkpoint"),
    "timesteps": (500, "timesteps is 500 here but 1000 in the checkpoint"),
    "linear_end": (0.02, "linear_end is 0.02 here but 0.012 in the checkpoint"),
    "linear_start": (0.0001, "linear_start is 0.0001 here but 0.00085 in the checkpoint"),
    "parameterization": ("v", "parameterization is 'v' here but the U-Net predicts 'eps'"),
    "cond_stage_config__params__layer": ("penultimate", "layer is 'penultimate' here but the U-Net was trained on "
                                                        "the text encoder's 'last' layer"),
    "unet_config__params__ckpt_path": (DELETE, "unet_config.params.ckpt_path is missing: the U-Net would keep random"),
    "first_stage_config__params__ddconfig__norm_num_groups": (4, "norm_num_groups is 4 here but 8 in the checkpoint"),
    "scale_factor": (0.18215, "scaling_factor is 0.18215 here but 0.2942"),
    "cond_stage_config__params__text_config__hidden_act": ("gelu", "hidden_act is 'gelu' here but 'quick_gelu'"),
}


@pytest.mark.parametrize("edit", list(MISMATCHES))
def test_a_config_that_differs_from_its_checkpoints_stops_with_the_list(edit):
    value, message = MISMATCHES[edit]
    with pytest.raises(ConfigError, match="differs from what its checkpoints were trained with") as err:
        build_from_config(shipped(**{edit: value}))
    assert message in str(err.value) and "strict=False" in str(err.value)


def test_strict_false_builds_and_warns_every_difference():
    cfg = shipped(timesteps=500, parameterization="v", unet_config__params__norm_num_groups=8)
    with pytest.warns(ConfigMismatchWarning) as caught:
        pipe = build_from_config(cfg, strict=False)
    message = str(caught[0].message)
    assert all(m in message for m in ("timesteps is 500", "parameterization is 'v'", "norm_num_groups is 8"))
    assert pipe.schedule.num_train_timesteps == 500 and pipe.prediction_type == "v_prediction"


def test_the_shipped_config_builds_strictly_and_records_its_schedule():
    from course_lib.diffusion.samplers import sample
    from course_lib.diffusion.schedules import make_schedule

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = build_from_config(SHIPPED_CONFIG)
    assert pipe.unet.training_schedule.num_train_timesteps == 1000
    context = torch.zeros(1, 77, pipe.unet.config.cross_attention_dim)

    def unet_fn(x, t):
        return pipe.unet(x, t, context)

    unet_fn.training_schedule = pipe.unet.training_schedule     # or any callable that carries it
    with pytest.raises(ValueError, match="differs from the model's training schedule"):
        sample(unet_fn, make_schedule("linear"), torch.randn(1, *pipe.latent_shape), "ddim", 2)


def test_invalid_yaml_is_a_clear_error(tmp_path, capsys):
    from course_lib.generate import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: course_lib.pipeline.config.LatentDiffusion\n  params: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line \d+, column \d+"):
        load_config(bad)
    assert main([PROMPT, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "Traceback" not in err


def test_device_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    from course_lib.generate import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([PROMPT, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: this machine has no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    assert main([PROMPT, "--device", "gpu0"]) == 2
    assert "is not a device" in capsys.readouterr().err


def test_command_line_config_mismatch_and_no_strict(tmp_path, capsys):
    import yaml

    from course_lib.generate import main

    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(shipped(timesteps=500)))
    assert main([PROMPT, "--config", str(path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "timesteps is 500 here but 1000" in err and "--no-strict" in err and "Traceback" not in err
    out = tmp_path / "out.png"
    assert main([PROMPT, "--config", str(path), "--steps", "1", "--no-strict", "--out", str(out)]) == 0
    assert "warning: the config differs" in capsys.readouterr().err and out.is_file()


def test_command_line_warns_words_the_shapeworld_model_never_saw(tmp_path, capsys):
    from course_lib.generate import main

    out = tmp_path / "out.png"
    assert main(["Заяц жонглирует мячами", "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: the prompt 'Заяц жонглирует мячами' has words the ShapeWorld model never saw" in err
    assert "'заяц', 'жонглирует', 'мячами'" in err
    assert main([PROMPT, "--steps", "1", "--out", str(out)]) == 0
    assert "never saw" not in capsys.readouterr().err


def test_command_line_names_a_damaged_weights_file(tmp_path, capsys, monkeypatch):
    """A truncated safetensors file whose checksum was updated in the manifest: named, no traceback."""
    import json
    import shutil

    from course_lib.core import checkpoints
    from course_lib.core.checkpoints import sha256_of
    from course_lib.core.paths import data_dir
    from course_lib.generate import main
    from course_lib.pipeline import config_checks, config_parts

    data = tmp_path / "data"
    shutil.copytree(data_dir(), data, ignore=shutil.ignore_patterns("mnist_5k.npz", "*mnist*", "*segmentation*",
                                                                    "*gan*", "*digit*", "*attribute*"))
    weights = data / "shapeworld_vae.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shapeworld_vae"]["sha256"] = sha256_of(weights)
    (data / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(checkpoints, "data_dir", lambda: data)
    monkeypatch.setattr(config_checks, "data_dir", lambda: data)
    monkeypatch.setattr(config_parts, "data_dir", lambda: data)
    assert main([PROMPT, "--steps", "1", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "shapeworld_vae.safetensors matches its checksum" in err and "not a readable safetensors file" in err
    assert "Traceback" not in err
