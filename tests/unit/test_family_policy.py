"""Model families in the request policy: detection from files, refusals, profiles, batch keys.

The family comes from ``model_index.json`` / the transformer config / a safetensors header,
never from the name; what a family cannot do is a 400 naming the parameter; few-step
profiles fill what the client left unset; the batch key carries the family.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from pixelmill.core.batching import batch_key
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.policy import resolve
from pixelmill.images.codecs import reencode_png
from tests.support.images import gradient
from pixelmill.core.profiles import load_profiles, parse_profiles
from pixelmill.core.types import ControlSpec, GenerationRequest, LoraSpec, Mode, RefinerSpec
from pixelmill.registry.families import detect_file, detect_folder, detect_keys
from pixelmill.settings import Settings


def fake_model(folder, class_name, transformer=None):
    """A folder with only what detection reads: model_index.json and the transformer config."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if transformer is not None:
        (folder / "transformer").mkdir()
        (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    return folder


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models" / "checkpoints"
    fake_model(root / "my-flux", "FluxPipeline", {"guidance_embeds": True})
    fake_model(root / "fast", "FluxPipeline", {"guidance_embeds": False})
    # Named like an SDXL few-step model, but the files say SD3.5 large: the files win.
    fake_model(root / "sdxl-lightning-sd3", "StableDiffusion3Pipeline", {"num_layers": 38})
    fake_model(root / "sd35m", "StableDiffusion3Pipeline", {"num_layers": 24})
    fake_model(root / "sdxl-lightning", "StableDiffusionXLPipeline")
    fake_model(root / "plain-xl", "StableDiffusionXLPipeline")
    return tmp_path / "models"


def policy(models, **fields):
    return Settings(models_dir=models, data_dir=models.parent / "data", **fields).policy()


def run(models, settings_fields=None, **fields):
    request = GenerationRequest(**({"prompt": "a cat"} | fields))
    return resolve(request, policy(models, **(settings_fields or {})))


def test_the_family_comes_from_the_files_not_the_name(models):
    root = models / "checkpoints"
    assert detect_folder(root / "my-flux").key == "flux/dev"
    assert detect_folder(root / "fast").key == "flux/schnell"
    assert detect_folder(root / "sdxl-lightning-sd3").key == "sd3/large"
    assert detect_folder(root / "sd35m").key == "sd3/medium"
    assert detect_folder(root / "plain-xl").key == "sdxl"
    assert run(models, model="sdxl-lightning-sd3").family == "sd3/large"


@pytest.mark.parametrize(("keys", "expected"), [
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight"],
     "flux/dev"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "flux/schnell"),
    (["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_q.weight",
      "time_text_embed.guidance_embedder.linear_1.weight"], "flux/dev"),
    ([f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(38)], "sd3/large"),
    ([f"joint_blocks.{i}.context_block.attn.qkv.weight" for i in range(24)], "sd3/medium"),
    (["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"], "sdxl"),
])
def test_single_files_are_recognised_from_their_header(tmp_path, keys, expected):
    path = tmp_path / "checkpoint.safetensors"
    save_file({key: np.zeros(1, dtype=np.float32) for key in keys}, str(path))
    assert detect_file(path).key == expected
    assert detect_keys(keys).key == expected


def test_a_pickle_or_unknown_file_has_no_family(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"never opened")
    assert detect_file(tmp_path / "x.ckpt") is None
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": np.zeros(1, dtype=np.float32)}, str(path))
    assert detect_file(path) is None


@pytest.mark.parametrize(("model", "fields", "param"), [
    ("fast", {"negative_prompt": "blurry"}, "negative_prompt"),
    ("my-flux", {"negative_prompt": "blurry"}, "negative_prompt"),
    ("fast", {"guidance": 3.5}, "guidance"),
    ("fast", {"clip_skip": 2}, "clip_skip"),
    ("fast", {"refiner": RefinerSpec(name="demo-refiner")}, "refiner"),
    ("sd35m", {"refiner": RefinerSpec(name="demo-refiner")}, "refiner"),
    ("sd35m", {"scheduler": "DPM++ 2M Karras"}, "scheduler"),
    ("my-flux", {"scheduler": "DDIM"}, "scheduler"),
    # diffusers has an SD3 ControlNet pipeline for txt2img only
    ("sd35m", {"controlnets": (ControlSpec(name="demo-sd3-controlnet", image=b"x"),), "mode": Mode.img2img,
               "init_image": reencode_png(gradient(64, 64)), "strength": 0.5}, "controlnets"),
])
def test_what_a_family_cannot_do_is_refused_naming_the_parameter(models, model, fields, param):
    with pytest.raises(InvalidRequest) as caught:
        run(models, model=model, **fields)
    assert caught.value.param == param
    assert "do not support" in caught.value.message


def test_what_a_family_can_do_passes(models):
    assert run(models, model="my-flux", guidance=2.0).guidance == 2.0  # FLUX.1-dev's guidance embedding
    assert run(models, model="fast", guidance=0).guidance == 0
    assert run(models, model="sd35m", negative_prompt="blurry", clip_skip=2).clip_skip == 2
    assert run(models, model="plain-xl", negative_prompt="x", clip_skip=2, scheduler="euler").scheduler == "euler"
    control = (ControlSpec(name="demo-flux-controlnet", image=b"x"),)
    assert run(models, model="my-flux", controlnets=control).controlnets == control
    assert run(models, model="sd35m", controlnets=control).controlnets == control  # the engine checks the fit
    # Flow-matching families: "Euler" (what A1111 clients send) is their own scheduler.
    assert run(models, model="my-flux", scheduler="Euler").scheduler is None


def test_the_server_default_refiner_does_not_apply_to_other_families(models):
    fields = {"refiner": "demo-refiner"}
    assert run(models, fields, model="plain-xl").refiner.name == "demo-refiner"
    assert run(models, fields, model="fast").refiner is None


def test_few_step_profiles_fill_what_the_client_left_unset(models):
    lightning = run(models, model="sdxl-lightning")
    assert (lightning.steps, lightning.guidance, lightning.scheduler) == (4, 0.0, "euler_trailing")
    schnell = run(models, model="fast")  # by family: flux/schnell
    assert (schnell.steps, schnell.guidance, schnell.family) == (4, 0.0, "flux/schnell")
    dev = run(models, model="my-flux")
    assert (dev.steps, dev.guidance) == (28, 3.5)
    assert (run(models, model="sd35m").steps, run(models, model="sd35m").guidance) == (40, 4.5)
    plain = run(models, model="plain-xl")
    assert (plain.steps, plain.guidance, plain.scheduler) == (30, 5.0, None)  # the server's defaults


def test_the_client_wins_over_a_profile(models):
    chosen = run(models, model="sdxl-lightning", steps=8, guidance=1.5, scheduler="euler_a")
    assert (chosen.steps, chosen.guidance, chosen.scheduler) == (8, 1.5, "euler_a")


def test_the_default_model_and_its_aliases_use_its_profile(models):
    # The default is FLUX.1-schnell: no model, or a bare alias of the default, gets its profile.
    for name in (None, "dall-e-3", "stability-ai/sdxl"):
        resolved = run(models, {"model": "fast"}, model=name)
        assert (resolved.steps, resolved.guidance, resolved.family) == (4, 0.0, "flux/schnell")
    # A bare alias whose *name* looks like a few-step model means the (SDXL) default, not that profile.
    plain = run(models, {"model": "plain-xl"}, model="black-forest-labs/flux-schnell")
    assert (plain.steps, plain.family) == (30, "sdxl")


def test_an_alias_to_a_few_step_model_gets_its_profile(models):
    resolved = run(models, {"model_aliases": ["fastxl=sdxl-lightning"]}, model="fastxl")
    assert (resolved.model, resolved.steps, resolved.scheduler) == ("sdxl-lightning", 4, "euler_trailing")


def test_an_operator_profile_file_extends_and_overrides(models, tmp_path):
    extra = tmp_path / "profiles.toml"
    extra.write_text('[[profile]]\nname = "house"\nmodels = ["plain-*"]\nsteps = 12\nguidance = 2.5\n'
                     '[[profile]]\nname = "schnell-8"\ndefault_for = "flux/schnell"\nsteps = 8\n')
    fields = {"model_profiles": extra}
    assert (run(models, fields, model="plain-xl").steps, run(models, fields, model="plain-xl").guidance) == (12, 2.5)
    assert run(models, fields, model="fast").steps == 8
    assert run(models, fields, model="fast").guidance == 0.0  # no guidance input: 0 whatever the profile


def test_a_bad_profile_file_names_itself():
    with pytest.raises(ValueError, match="mine.toml"):
        parse_profiles('[[profile]]\nname = "x"\nscheduler = "nope"\n', source="mine.toml")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_profiles('[[profile]]\nname = "x"\nstepz = 4\n', source="mine.toml")
    assert load_profiles().find("SDXL-Turbo-1.0").steps == 1  # shipped table, case-insensitive globs


def test_the_batch_key_includes_the_family(models, tmp_path):
    flux = run(models, model="fast", steps=2, width=64, height=64)
    assert batch_key(flux) != batch_key(flux.model_copy(update={"family": "sdxl"}))
    assert batch_key(flux) == batch_key(run(models, model="fast", steps=2, width=64, height=64, prompt="other"))


def test_unknown_models_are_left_to_the_engine(models):
    # A hub id that is not in the cache: no family known here, no family checks, no profile.
    resolved = run(models, model="someone/not-cached", negative_prompt="x")
    assert resolved.family is None and resolved.steps == 30
