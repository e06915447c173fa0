"""Public Stable Diffusion folders in the course's own code (course_lib.pipeline.convert), against diffusers.

Tiny random ``StableDiffusionPipeline``s shaped like SD 1 (CLIP with quick_gelu, convolution
projections in the U-Net's transformers, one head count), SD 2 (gelu, linear projections, heads per
level, pad token "!") and SD 2 with v-prediction are saved with ``save_pretrained``, read by the
course's loader, and must make the same images as diffusers from the same prompt, negative prompt,
guidance scale, starting latents and sampler (DDIM, PLMS, DPM-Solver++ at 10 steps, guidance 7.5).
Observed max |difference| on images in [0, 1]: 4e-6 to 8e-6 (the random U-Nets drive the latents to
magnitudes of 7 to 70, so this is float32 rounding); PLMS on the v-prediction model, which combines raw
v outputs as diffusers does, 2e-5. Asserted: ATOL = 5e-5.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import warnings

import pytest
import torch
from conftest import require

diffusers = require("diffusers")
transformers = require("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig as HFTextConfig  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from course_lib.diffusion.guidance import apply_style, guided_model_fn  # noqa: E402
from course_lib.diffusion.samplers import sample  # noqa: E402
from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder  # noqa: E402
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe  # noqa: E402
from course_lib.pipeline.convert import (  # noqa: E402
    CheckpointError,
    SchedulerSettingWarning,
    download_pipeline,
    load_diffusers_pipeline,
    load_tokenizer,
    pipeline_scheduler_config,
    sampler_options,
    schedule_from_config,
    scheduler_sampler,
    text_config_from_transformers,
    unet_config_from_diffusers,
)
from course_lib.pipeline.text_to_image import TextToImagePipeline  # noqa: E402

ATOL = 5e-5
STEPS = 10
GUIDANCE = 7.5
PROMPT, STYLE = "A dog eats a carrot", "cinematic-default"

# The scheduler configs of the public folders, as they are on the Hub (older diffusers wrote no
# timestep_spacing). SD 1.5 and SD 2.1-base: PNDM (PLMS), epsilon; SD 2.1 (768): DDIM, v-prediction.
SD_BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "trained_betas": None, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
            "steps_offset": 1}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SD_BETAS}
SD21_BASE_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", **SD_BETAS,
                       "prediction_type": "epsilon"}
SD21_V_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", **SD_BETAS,
                    "prediction_type": "v_prediction"}

# The public U-Net and text-encoder configs (SD 1.5; SD 2.1-base), to check the mapping rules on.
SD_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280],
           "center_input_sample": False, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
           "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
           "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
           "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_UNET = {**SD_UNET, "attention_head_dim": 8, "cross_attention_dim": 768}
SD21_UNET = {**SD_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
             "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False,
             "use_linear_projection": True}
SD21_TEXT = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
             "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
             "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05,
             "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 16,
             "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512, "vocab_size": 49408}

# name -> how the tiny model differs: text encoder, U-Net, pad token, scheduler config, files
CASES = {
    "sd1": dict(text={"hidden_act": "quick_gelu"}, pad="<|endoftext|>", scheduler=SD15_SCHEDULER, vae_scale=0.25,
                unet={"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                      "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "attention_head_dim": 2,
                      "layers_per_block": 1},
                hub_files=False),     # tokenizer.json and transformers 5.x text-encoder keys, as saved here
    "sd2": dict(text={"hidden_act": "gelu"}, pad="!", scheduler=SD21_BASE_SCHEDULER, vae_scale=0.18215,
                unet={"down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "attention_head_dim": (2, 4),
                      "use_linear_projection": True, "layers_per_block": 2},
                hub_files=True),      # vocab.json + merges.txt + special_tokens_map.json, 4.x "text_model." keys
}
CASES["sd2_v"] = {**CASES["sd2"], "scheduler": SD21_V_SCHEDULER}

# the diffusers scheduler each course sampler equals, and SD's settings (REFERENCE_NOTES.md)
REFERENCE_SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "plms": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def corpus() -> list[str]:
    words = [PROMPT, "The hare is juggling balls", "Dog eats sausage on the beach at sunset", "a red circle"]
    return [p for w in words for style in ("none", "cinematic-default", "sai-fantasy art")
            for p in apply_style(w, "", style)]


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter so that norms' weights and biases differ from their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def write_hub_tokenizer(tokenizer: CLIPStyleTokenizer, folder, pad: str) -> None:
    """Tokenizer files as on the Hub: vocab.json, merges.txt, and SD 2's quirk, a pad token of "!" in
    special_tokens_map.json while tokenizer_config.json still says <|endoftext|>."""
    tokenizer.save(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|endoftext|>"}))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))


def build_case(name: str, root) -> tuple:
    """(folder, diffusers pipeline) for one case: random weights, saved with save_pretrained."""
    case = CASES[name]
    vocab, merges = train_bpe(corpus(), num_merges=1000, min_frequency=1)
    tok_dir = root / f"{name}_tokenizer"
    write_hub_tokenizer(CLIPStyleTokenizer(vocab, merges), tok_dir, case["pad"])
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    assert tokenizer.pad_token == case["pad"]
    torch.manual_seed(0)
    unet = randomize_(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), norm_num_groups=8,
        cross_attention_dim=32, **case["unet"]), 1)
    vae = randomize_(AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=16, scaling_factor=case["vae_scale"]), 2)
    text_encoder = randomize_(CLIPTextModel(HFTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **case["text"])), 3)
    scheduler = PNDMScheduler.from_config({k: v for k, v in case["scheduler"].items() if not k.startswith("_")})
    ref = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    folder = root / name
    ref.save_pretrained(folder)
    # the scheduler config exactly as on the Hub
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(case["scheduler"], indent=2))
    if case["hub_files"]:
        shutil.rmtree(folder / "tokenizer")
        write_hub_tokenizer(CLIPStyleTokenizer(vocab, merges), folder / "tokenizer", case["pad"])
        path = folder / "text_encoder" / "model.safetensors"
        save_file({f"text_model.{k}": v for k, v in load_file(str(path)).items()}, str(path))
    return folder, ref


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_folders")
    return {name: build_case(name, root) for name in CASES}


@pytest.fixture(scope="module")
def loaded(built):
    return {name: load_diffusers_pipeline(folder) for name, (folder, _) in built.items()}


def latents_for(pipe: TextToImagePipeline) -> torch.Tensor:
    return torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(7))


def diffusers_images(ref: StableDiffusionPipeline, scheduler, latents: torch.Tensor) -> torch.Tensor:
    pipe = StableDiffusionPipeline(**{**ref.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = apply_style(PROMPT, "", STYLE)
    return pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=latents.clone(), output_type="pt").images


def reference_scheduler(folder, sampler: str, **extra):
    """The diffusers scheduler for ``sampler``, from the folder's config, as a user would build it."""
    cls, kwargs = REFERENCE_SCHEDULERS[sampler]
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return cls.from_config(config, **kwargs, **extra)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


PIPELINE_CASES = [(name, sampler) for name in CASES for sampler in REFERENCE_SCHEDULERS]


@pytest.mark.parametrize("name, sampler", PIPELINE_CASES)
def test_course_pipeline_makes_diffusers_images(built, loaded, name, sampler):
    folder, ref = built[name]
    pipe = loaded[name]
    latents = latents_for(pipe)
    ours = pipe(PROMPT, style=STYLE, sampler=sampler, steps=STEPS, guidance_scale=GUIDANCE, latents=latents,
                show_progress=False)
    expected = diffusers_images(ref, reference_scheduler(folder, sampler), latents)
    assert ours.images.shape == expected.shape == (1, 3, 16, 16)
    assert expected.std() > 0.01, "the images should not be flat"
    diff = max_diff(ours.images, expected)
    assert diff < ATOL, f"{name} {sampler}: max |difference| {diff:.2e}"


@pytest.mark.parametrize("name, sampler", [("sd2_v", "plms"), ("sd1", "dpm-solver++"), ("sd2", "ddim")])
def test_folder_scheduler_settings_match_diffusers(built, loaded, name, sampler):
    """``sampler_options`` reproduces ``Scheduler.from_config(folder config)``, including a config written
    by a recent diffusers (timestep_spacing "leading" spelled out, which DPM-Solver then uses) and PLMS
    on a v-prediction model."""
    folder, ref = built[name]
    pipe = loaded[name]
    config = {**json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), "timestep_spacing": "leading"}
    options = sampler_options(config, sampler)
    latents = latents_for(pipe)
    prompt, negative = apply_style(PROMPT, "", STYLE)
    (cond, _), (uncond, _) = pipe.encode_prompt([prompt]), pipe.encode_prompt([negative])   # SD: no mask
    model_fn = guided_model_fn(lambda x, t, c: pipe.unet(x, t, c), cond, uncond, GUIDANCE)
    with torch.no_grad():
        result = sample(model_fn, pipe.schedule, latents, sampler, STEPS, prediction_type=pipe.prediction_type,
                        **options)
        ours = pipe.decode(result.sample)
    cls, kwargs = REFERENCE_SCHEDULERS[sampler]
    expected = diffusers_images(ref, cls.from_config(config, **kwargs), latents)
    assert max_diff(ours, expected) < ATOL


def test_hub_scheduler_configs_give_sds_conventions():
    for config in (SD15_SCHEDULER, SD21_BASE_SCHEDULER, SD21_V_SCHEDULER):
        assert sampler_options(config, "ddim") == {"timestep_spacing": "leading", "steps_offset": 1,
                                                   "set_alpha_to_one": False}
        assert sampler_options(config, "dpm-solver++") == {"timestep_spacing": "linspace", "steps_offset": 1,
                                                           "final_sigmas_type": "zero", "lower_order_final": True,
                                                           "order": 2}
    assert sampler_options(SD15_SCHEDULER, "plms")["combine"] == "eps"
    assert sampler_options(SD21_V_SCHEDULER, "plms")["combine"] == "model_output"
    assert sampler_options({**SD15_SCHEDULER, "timestep_spacing": "trailing"}, "ddim")["timestep_spacing"] == "trailing"
    assert (scheduler_sampler(SD15_SCHEDULER), scheduler_sampler(SD21_V_SCHEDULER)) == ("plms", "ddim")
    schedule, prediction = schedule_from_config(SD21_V_SCHEDULER)
    assert prediction == "v_prediction" and schedule.name == "scaled_linear"
    ref = DDIMScheduler.from_config(SD21_V_SCHEDULER)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6, rtol=0)


def test_tokenizer_ids_and_pad_token_equal_clip_tokenizer(built, loaded):
    prompts = [apply_style(PROMPT, "", STYLE)[0], "", "the hare is juggling balls"]
    for name, (_, ref) in built.items():
        ours = loaded[name].tokenizer
        assert ours.pad_token == CASES[name]["pad"]
        expected = ref.tokenizer(prompts, padding="max_length", max_length=ref.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ours(prompts), expected), name


def test_both_text_encoder_key_layouts_and_configs_load(built, loaded):
    def keys(name):
        return list(load_file(str(built[name][0] / "text_encoder" / "model.safetensors")))

    assert not any(k.startswith("text_model.") for k in keys("sd1"))         # transformers 5.x layout
    assert all(k.startswith("text_model.") for k in keys("sd2"))             # transformers 4.x layout
    for name, (_, ref) in built.items():
        ids = loaded[name].tokenizer(["a dog eats a carrot"])
        with torch.no_grad():
            torch.testing.assert_close(loaded[name].text_encoder(ids).last_hidden_state,
                                       ref.text_encoder(ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    assert loaded["sd1"].text_encoder.config.hidden_act == "quick_gelu"
    assert loaded["sd2"].text_encoder.config.hidden_act == "gelu"
    assert loaded["sd1"].vae.config.scaling_factor == 0.25
    assert loaded["sd2_v"].prediction_type == "v_prediction"


def test_public_unet_configs_map_by_the_rules():
    sd1, sd2 = unet_config_from_diffusers(SD15_UNET), unet_config_from_diffusers(SD21_UNET)
    assert sd1.attention_levels == sd2.attention_levels == (0, 1, 2)
    assert [sd1.heads_at(i) for i in range(4)] == [8, 8, 8, 8]                     # 40..160 channels per head
    assert [sd2.heads_at(i) for i in range(4)] == [5, 10, 20, 20]                  # 64 channels per head
    assert [c // sd2.heads_at(i) for i, c in enumerate(sd2.block_out_channels)] == [64] * 4
    assert (sd1.use_linear_projection, sd2.use_linear_projection) == (False, True)
    assert (sd1.cross_attention_dim, sd2.cross_attention_dim, sd1.sample_size) == (768, 1024, 64)
    text = text_config_from_transformers(SD21_TEXT)
    assert (text.hidden_act, text.num_hidden_layers, text.hidden_size) == ("gelu", 23, 1024)


def test_sd2_folder_text_encoder_is_the_penultimate_layer():
    """SD 2 reads layer 23 of OpenCLIP's 24 (with the final LayerNorm): its folder stores 23 layers."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=600, hidden_size=32, num_attention_heads=4, intermediate_size=64, hidden_act="gelu",
                 eos_token_id=599)
    full = randomize_(CLIPTextEncoder(CLIPTextConfig(num_hidden_layers=3, **sizes)), 4)
    cut = CLIPTextEncoder(CLIPTextConfig(num_hidden_layers=2, **sizes))
    cut.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("encoder.layers.2.")})
    ids = torch.randint(0, 599, (2, 77))
    ids[:, 9] = 599
    with torch.no_grad():
        torch.testing.assert_close(cut(ids).last_hidden_state, full.text_context(ids, layer=-2))


def test_bf16_and_fp16_variant(built, tmp_path):
    folder, _ = built["sd1"]
    fp32 = load_diffusers_pipeline(folder)
    bf16 = load_diffusers_pipeline(folder, use_bf16=True)
    a = fp32(PROMPT, steps=4, show_progress=False).images
    b = bf16(PROMPT, steps=4, show_progress=False).images
    assert bf16.unet_dtype == torch.bfloat16 and 0 < max_diff(a, b) < 0.1
    half = tmp_path / "half"
    shutil.copytree(folder, half)
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        path = half / part / f"{stem}.safetensors"
        save_file({k: v.half() for k, v in load_file(str(path)).items()}, str(half / part / f"{stem}.fp16.safetensors"))
        path.unlink()
    with pytest.raises(CheckpointError, match=r"unet: .*diffusion_pytorch_model\.safetensors is missing .*"
                                              r"fp16.*variant="):
        load_diffusers_pipeline(half)
    c = load_diffusers_pipeline(half, variant="fp16")(PROMPT, steps=4, show_progress=False).images
    assert max_diff(a, c) < 0.01


# ---------------------------------------------------------------------------------------------- clear errors

@pytest.fixture
def copy_of(built, tmp_path):
    def make(name: str = "sd1"):
        return shutil.copytree(built[name][0], tmp_path / name)
    return make


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_parts_are_named(copy_of, tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_diffusers_pipeline(tmp_path / "nowhere")
    folder = copy_of()
    (folder / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"^vae: .*vae/config\.json is missing"):
        load_diffusers_pipeline(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(CheckpointError, match=r"model_index\.json: .* is missing"):
        load_diffusers_pipeline(folder)
    folder = copy_of("sd2")
    for f in ("vocab.json", "merges.txt"):
        (folder / "tokenizer" / f).unlink()
    with pytest.raises(CheckpointError, match="tokenizer: .*neither vocab.json"):
        load_diffusers_pipeline(folder)


def test_pickled_weights_are_refused(copy_of):
    folder = copy_of()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match=r"unet: only pickled weights \(diffusion_pytorch_model\.bin\).*"
                                              r"safetensors only.*save_pretrained"):
        load_diffusers_pipeline(folder)


@pytest.mark.parametrize("changes, message", [
    ({"class_embed_type": "timestep"}, r"class_embed_type='timestep' is not supported"),
    ({"addition_embed_type": "text_time"}, r"addition_embed_type='text_time' is not supported"),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]},
     r"down_block_types\[0\]='SimpleCrossAttnDownBlock2D' is not a block the course has"),
    ({"up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}, r"do not mirror down_block_types"),
    ({"sample_size": 9}, r"sample_size=9 must be divisible"),
    ({"time_embedding_type": "fourier"}, r"time_embedding_type='fourier' is not supported"),
    ({"brand_new_setting": 3}, r"brand_new_setting=3 is a setting the course's loader does not know"),
])
def test_unsupported_unet_configs_are_named(copy_of, changes, message):
    folder = copy_of()
    edit_json(folder / "unet" / "config.json", **changes)
    with pytest.raises(CheckpointError, match=r"unet.*" + message):
        load_diffusers_pipeline(folder)


def test_other_unsupported_settings_are_named(copy_of):
    folder = copy_of()
    edit_json(folder / "unet" / "config.json", cross_attention_dim=16)
    with pytest.raises(CheckpointError, match=r"^unet: the weights do not fit .*shape mismatches .*attn2\.to_k"):
        load_diffusers_pipeline(folder)
    folder = copy_of("sd2")
    edit_json(folder / "text_encoder" / "config.json", hidden_act="relu")
    with pytest.raises(CheckpointError, match=r"text_encoder/config\.json: hidden_act must be one of"):
        load_diffusers_pipeline(folder)
    folder = copy_of("sd2_v")
    edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline")
    with pytest.raises(CheckpointError, match="not a StableDiffusionPipeline"):
        load_diffusers_pipeline(folder)
    with pytest.raises(CheckpointError, match="prediction_type='flow' is not one of"):
        schedule_from_config({**SD15_SCHEDULER, "prediction_type": "flow"})
    with pytest.raises(CheckpointError, match="thresholding=True asks for dynamic thresholding .* 'ddim' sampler"):
        sampler_options({**SD15_SCHEDULER, "thresholding": True}, "ddim")
    with pytest.raises(CheckpointError, match="use_exponential_sigmas=True asks for exponential"):
        sampler_options({**SD15_SCHEDULER, "use_exponential_sigmas": True}, "dpm-solver++")
    with pytest.raises(CheckpointError, match="skip_prk_steps=False asks for PNDM's Runge-Kutta"):
        sampler_options({**SD15_SCHEDULER, "skip_prk_steps": False}, "plms")
    with pytest.raises(CheckpointError, match="tokenizer: "):
        load_tokenizer(folder / "unet")


def test_download_says_offline_in_one_sentence(monkeypatch):
    huggingface_hub = require("huggingface_hub")

    class RepositoryNotFoundError(Exception):
        pass

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    def unknown(*args, **kwargs):
        raise RepositoryNotFoundError("404")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConnectionError, match=r"^could not download 'sd-legacy/stable-diffusion-v1-5' .*offline"):
        download_pipeline("sd-legacy/stable-diffusion-v1-5")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unknown)
    with pytest.raises(ConnectionError, match=r"has no public model 'stabilityai/stable-diffusion-2-1-base'"):
        download_pipeline("stabilityai/stable-diffusion-2-1-base")


# ------------------------------------------------------------------------------------------------
# Issue 17: every scheduler setting is honoured (= diffusers) or refused by name; no silent defaults
# ------------------------------------------------------------------------------------------------

def scheduler_folder(copy_of, name: str, sampler: str, changes: dict, drop: tuple = ()):
    """A copy of a built folder whose scheduler config has ``changes`` and lacks the keys ``drop``."""
    folder = copy_of(name)
    path = folder / "scheduler" / "scheduler_config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps({**config, **changes}))
    return folder


# float32 differences grow with the guidance scale on these random U-Nets (at 7.5: 2e-4 once clipped)
SETTING_GUIDANCE = 1.0
SETTING_CASES = {  # id -> (case, sampler, steps, config changes, keys removed)
    "ddim from a PNDM config without clip_sample (DDIM's default: clip)": ("sd1", "ddim", 10, {}, ("clip_sample",)),
    "ddim clip_sample_range 2 from a PNDM config": ("sd1", "ddim", 10, {"clip_sample": True,
                                                                        "clip_sample_range": 2.0}, ()),
    "DDIM config without clip_sample (the pipeline turns it off)": ("sd2_v", "ddim", 10, {}, ("clip_sample",)),
    "ddim trailing 7 steps": ("sd1", "ddim", 7, {"timestep_spacing": "trailing"}, ()),
    "plms trailing 7 steps": ("sd1", "plms", 7, {"timestep_spacing": "trailing"}, ()),
    "plms v linspace 6 steps": ("sd2_v", "plms", 6, {"timestep_spacing": "linspace"}, ()),
    "dpm-solver++ karras": ("sd1", "dpm-solver++", 10, {"use_karras_sigmas": True}, ()),
    "dpm-solver++ karras v trailing 7": ("sd2_v", "dpm-solver++", 7,
                                         {"use_karras_sigmas": True, "timestep_spacing": "trailing"}, ()),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", list(SETTING_CASES))
def test_folder_scheduler_settings_are_honoured_like_diffusers(built, copy_of, case):
    """The course's pipeline = diffusers' pipeline loaded from the folder, its scheduler switched the
    documented way (``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``)."""
    name, sampler, steps, changes, drop = SETTING_CASES[case]
    folder = scheduler_folder(copy_of, name, sampler, changes, drop)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        pipe = load_diffusers_pipeline(folder)
    latents = latents_for(pipe)
    ours = pipe(PROMPT, style=STYLE, sampler=sampler, steps=steps, guidance_scale=SETTING_GUIDANCE, latents=latents,
                show_progress=False)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    own = getattr(diffusers, config["_class_name"]).from_config(config)
    ref = StableDiffusionPipeline(**{**built[name][1].components, "scheduler": own})
    if sampler != scheduler_sampler(config):       # the folder's own scheduler runs as loaded
        cls, kwargs = REFERENCE_SCHEDULERS[sampler]
        ref.scheduler = cls.from_config(ref.scheduler.config, **kwargs)
    ref.set_progress_bar_config(disable=True)
    prompt, negative = apply_style(PROMPT, "", STYLE)
    expected = ref(prompt=prompt, negative_prompt=negative, num_inference_steps=steps,
                   guidance_scale=SETTING_GUIDANCE, latents=latents.clone(), output_type="pt").images
    diff = max_diff(ours.images, expected)
    assert diff < ATOL, f"{case}: max |difference| {diff:.2e}"
    clip = ref.scheduler.config.get("clip_sample", False)
    assert pipe.sampler_options[sampler].get("clip_sample", False) == clip


def test_folder_without_clip_sample_warns_that_the_pipeline_turns_it_off(copy_of):
    """diffusers' pipeline turns its own DDIM scheduler's clip_sample (default True) off when loading;
    a DDIM switched in with from_config(pipe.scheduler.config) takes the default again and clips."""
    folder = scheduler_folder(copy_of, "sd2_v", "ddim", {}, ("clip_sample", "steps_offset"))
    with pytest.warns(SchedulerSettingWarning) as caught:
        pipe = load_diffusers_pipeline(folder)
    message = " ".join(str(w.message) for w in caught)
    assert "steps_offset=0 becomes 1; clip_sample=True (DDIMScheduler default) is turned off for the 'ddim'" in message
    assert "clip_sample" not in pipe.sampler_options["ddim"] and pipe.sampler_options["ddim"]["steps_offset"] == 1
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert pipeline_scheduler_config(config, "ddpm", warn=False).get("clip_sample") is None   # DDPM's default: clip
    assert sampler_options(pipeline_scheduler_config(config, "ddpm", warn=False), "ddpm")["clip_sample"] is True


@pytest.mark.parametrize("drop", [(), ("clip_sample",)])
def test_sampler_options_clip_like_the_scheduler_from_config(drop):
    """Scheduler level: ``DDIMScheduler.from_config(config)`` clips where the config says so or omits it."""
    config = {**{k: v for k, v in SD15_SCHEDULER.items() if k not in drop}}
    if not drop:
        config.update(clip_sample=True, clip_sample_range=1.5)
    options = sampler_options(config, "ddim")
    assert options["clip_sample"] is True
    model = lambda x, t: 0.7 * x * torch.cos(t.float().view(-1, 1, 1, 1) / 300) + 0.2  # noqa: E731
    x_T = 4 * torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    schedule, _ = schedule_from_config(config)
    ref_sched = DDIMScheduler.from_config(config)
    ref_sched.set_timesteps(10)
    x = x_T.clone()
    for t in ref_sched.timesteps:
        x = ref_sched.step(model(x, torch.full((1,), int(t))), t, x).prev_sample
    ours = sample(model, schedule, x_T, "ddim", 10, **options).sample
    assert (ours - x).abs().max() < 1e-5
    assert (sample(model, schedule, x_T, "ddim", 10).sample - x).abs().max() > 1e-3


def test_settings_the_course_does_not_do_refuse_that_sampler_by_name(copy_of):
    folder = scheduler_folder(copy_of, "sd1", "ddim", {"thresholding": True})
    pipe = load_diffusers_pipeline(folder)           # the folder loads; only the samplers that would differ refuse
    for sampler in ("ddim", "dpm-solver++"):
        expected = re.escape(f"the '{sampler}' sampler cannot reproduce") + ".*thresholding=True"
        with pytest.raises(ValueError, match=expected):
            pipe(PROMPT, sampler=sampler, steps=2, show_progress=False)
    pipe(PROMPT, sampler="plms", steps=2, show_progress=False)            # PNDM has no thresholding
    # a key the config omits takes the diffusers scheduler's default: PNDM's skip_prk_steps is False
    with pytest.raises(CheckpointError, match=r"skip_prk_steps=False \(diffusers' default for PNDMScheduler"):
        sampler_options({k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"}, "plms")
    assert sampler_options({k: v for k, v in SD21_V_SCHEDULER.items() if k != "clip_sample"}, "ddim")[
        "clip_sample"] is True
    sde = {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}
    assert scheduler_sampler(sde) is None
    assert scheduler_sampler({"_class_name": "DPMSolverMultistepScheduler"}) == "dpm-solver++"


def test_every_diffusers_scheduler_setting_is_known():
    """Each __init__ setting of the four schedulers is a schedule key, a mapped option or a checked setting,
    with diffusers' own default (so a config that omits it gets what diffusers would use)."""
    import inspect

    from course_lib.pipeline.convert import SAMPLER_SCHEDULERS, SCHEDULER_SETTINGS

    schedule_keys = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                     "prediction_type", "rescale_betas_zero_snr", "algorithm_type"}
    classes = {"ddpm": diffusers.DDPMScheduler, "ddim": DDIMScheduler, "plms": PNDMScheduler,
               "dpm-solver++": DPMSolverMultistepScheduler}
    for sampler, cls in classes.items():
        params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        known = {**SAMPLER_SCHEDULERS[sampler][1], **SCHEDULER_SETTINGS[sampler]}
        assert set(params) - schedule_keys - {"solver_order"} <= set(known) | {"solver_order"}, sampler
        for key, value in SCHEDULER_SETTINGS[sampler].items():
            assert params[key] == value, (sampler, key)


def test_num_train_timesteps_other_than_sds_is_refused(copy_of):
    folder = scheduler_folder(copy_of, "sd1", "plms", {"num_train_timesteps": 500})
    with pytest.raises(CheckpointError, match="num_train_timesteps=500; Stable Diffusion 1.x and 2.x"):
        load_diffusers_pipeline(folder)
    with pytest.raises(CheckpointError, match="trained_betas has 3 values for num_train_timesteps=1000"):
        schedule_from_config({**SD15_SCHEDULER, "trained_betas": [0.1, 0.2, 0.3]})


def test_a_corrupted_weights_file_is_named(copy_of):
    folder = copy_of("sd2")
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"vae: .*vae/diffusion_pytorch_model\.safetensors is not a readable "
                                              "safetensors file .*download that file again"):
        load_diffusers_pipeline(folder)


def test_the_loaded_unet_records_its_schedule(loaded):
    from course_lib.diffusion.schedules import linear_schedule

    pipe = loaded["sd1"]
    assert pipe.unet.training_schedule is pipe.schedule
    x = torch.randn(1, *pipe.latent_shape)
    context = torch.zeros(1, 77, pipe.unet.config.cross_attention_dim)
    unet_fn = functools.partial(pipe.unet, context=context)      # the U-Net itself says which schedule it needs
    sample(unet_fn, pipe.schedule, x, "ddim", 2)
    with pytest.raises(ValueError, match="differs from the model's training schedule"):
        sample(unet_fn, linear_schedule(), x, "ddim", 2)
