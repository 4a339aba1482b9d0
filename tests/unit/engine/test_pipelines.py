"""PipelineSet (shared weights across modes), schedulers and device handling."""

from __future__ import annotations

import gc
import logging
import os
import weakref

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.core.types import Mode
from pixelmill.core import samplers
from pixelmill.engine import schedulers
from pixelmill.engine import device
from pixelmill.engine.device import DeviceConfig, nan_guard, prepare_pipeline, select_device
from pixelmill.engine.loader import load_folder
from pixelmill.engine.pipelines import PipelineSet
from pixelmill.core.errors import GenerationFailed, InvalidRequest, ModelUnavailable

SHARED = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe("a boat", width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(5), **kwargs).images


# --- PipelineSet -------------------------------------------------------------------------


def test_modes_share_every_component(pipes):
    base = pipes.get(Mode.txt2img)
    assert base is pipes.base
    for mode in (Mode.img2img, Mode.inpaint):
        pipe = pipes.get(mode)
        assert pipes.get(mode) is pipe  # created once
        for name in SHARED:
            assert getattr(pipe, name) is getattr(base, name), (mode, name)
    assert pipes.loaded_modes == {Mode.txt2img, Mode.img2img, Mode.inpaint}


def test_img2img_and_inpaint_run(pipes):
    init = Image.fromarray((_run(pipes.base)[0] * 255).astype("uint8"))
    out = _run(pipes.get(Mode.img2img), image=init, strength=0.5, num_inference_steps=4)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = _run(pipes.get(Mode.inpaint), image=init, mask_image=mask, strength=0.99,
               num_inference_steps=3)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_from_pipe_keeps_half_precision_of_shared_weights(models_dir):
    # diffusers' from_pipe casts to float32 unless told otherwise -- which would cast
    # the shared UNet of the base pipeline too.
    cfg = DeviceConfig(device="cpu", dtype=torch.bfloat16)
    pipes = PipelineSet(load_folder(models_dir / "checkpoints" / "demo", cfg), "demo", cfg)
    pipes.get(Mode.img2img)
    pipes.get(Mode.inpaint)
    assert pipes.base.unet.dtype == torch.bfloat16
    assert pipes.base.text_encoder_2.dtype == torch.bfloat16


def test_close_frees_the_weights(models_dir):
    cfg = select_device("cpu")
    pipes = PipelineSet(load_folder(models_dir / "checkpoints" / "demo", cfg), "demo", cfg)
    pipes.get(Mode.img2img)
    unet = weakref.ref(pipes.base.unet)
    pipes.close()
    gc.collect()
    assert unet() is None
    with pytest.raises(GenerationFailed):
        pipes.get(Mode.txt2img)


def _storages(pipe) -> set[int]:
    """Addresses of the memory behind every parameter and buffer of a pipeline's modules."""
    return {t.untyped_storage().data_ptr() for c in pipe.components.values() if isinstance(c, torch.nn.Module)
            for t in (*c.parameters(), *c.buffers())}


def test_extra_modes_add_no_weights(models_dir, cpu):
    """img2img and inpaint hold no tensor memory of their own, and leave txt2img's in place.

    Exact where RSS is not; the RSS of txt2img only vs all modes is measured on the bench
    model by ``python -m bench.memory`` (section 6 of ``python -m bench.serve``).
    """
    pipes = PipelineSet(load_folder(models_dir / "checkpoints" / "demo", cpu), "demo", cpu)
    base = _storages(pipes.base)
    for mode in (Mode.img2img, Mode.inpaint):
        assert _storages(pipes.get(mode)) == base, mode
    assert _storages(pipes.base) == base  # not replaced by a copy or a cast either
    pipes.close()


# --- schedulers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, canonical", [
    ("euler", "euler"), ("Euler", "euler"), ("Euler a", "euler_a"), ("euler-a", "euler_a"),
    ("k_euler_ancestral", "euler_a"), ("DPM++ 2M", "dpmpp_2m"),
    ("DPM++ 2M Karras", "dpmpp_2m_karras"), ("dpm++_2m_karras", "dpmpp_2m_karras"),
    ("dpmpp-2m-karras", "dpmpp_2m_karras"), ("DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras"),
    ("DDIM", "ddim"), ("UniPC", "unipc"), ("LCM", "lcm"), ("Heun", "heun"), ("PLMS", "pndm"),
    ("  euler_A ", "euler_a"),
])
def test_scheduler_aliases(name, canonical):
    assert samplers.canonical_scheduler(name) == canonical


def test_unknown_scheduler_is_invalid_request():
    with pytest.raises(InvalidRequest) as info:
        samplers.canonical_scheduler("warp drive")
    assert info.value.param == "scheduler"
    assert "dpmpp_2m_karras" in info.value.message


def test_scheduler_with_missing_dependency_is_invalid_request(monkeypatch):
    monkeypatch.setattr(samplers, "_installed", lambda package: False)
    with pytest.raises(InvalidRequest, match="torchsde") as info:
        samplers.canonical_scheduler("DPM++ SDE Karras")
    assert info.value.param == "scheduler"
    assert "dpmpp_sde_karras" not in samplers.available_schedulers()


def test_required_canonical_names_exist():
    required = {"euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm"}
    assert required <= set(samplers.available_schedulers())


@pytest.mark.parametrize("name", samplers.available_schedulers())
def test_every_scheduler_runs_two_steps(pipes, name):
    default = pipes.base.scheduler
    with schedulers.use_scheduler(pipes.base, name) as scheduler:
        assert scheduler is not default
        assert type(scheduler).__name__ == samplers.SCHEDULERS[name].class_name
        out = _run(pipes.base)
    assert pipes.base.scheduler is default  # restored for the next request
    assert np.isfinite(out).all()


def test_karras_variants_use_karras_sigmas(pipes):
    config = pipes.base.scheduler.config
    assert schedulers.make_scheduler("dpmpp_2m_karras", config).config.use_karras_sigmas
    plain = schedulers.make_scheduler("dpmpp_2m", {**config, "use_karras_sigmas": True})
    assert not plain.config.use_karras_sigmas
    assert schedulers.make_scheduler("dpmpp_2m", config).config.beta_end == config.beta_end


def test_default_scheduler_is_a_fresh_copy_per_call(pipes):
    default = pipes.base.scheduler
    with schedulers.use_scheduler(pipes.base, None) as scheduler:
        assert scheduler is not default and type(scheduler) is type(default)
    assert pipes.base.scheduler is default


def test_sampler_labels():
    assert samplers.sampler_label("dpm++_2m_karras", "EulerDiscreteScheduler") == "DPM++ 2M Karras"
    assert samplers.sampler_label(None, "EulerDiscreteScheduler") == "Euler"
    assert samplers.sampler_label(None, "DPMSolverMultistepScheduler", karras=True) == (
        "DPM++ 2M Karras")
    assert samplers.sampler_label(None, "FancyScheduler") == "FancyScheduler"
    config = {"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert samplers.sampler_label(None, config) == "DPM++ 2M Karras"


def test_scheduler_config_is_the_loaded_default(pipes):
    config = pipes.scheduler_config
    assert config["_class_name"] == "EulerDiscreteScheduler"
    with schedulers.use_scheduler(pipes.base, "ddim"):
        assert pipes.scheduler_config == config
    fresh = schedulers.make_scheduler(None, config)
    assert type(fresh).__name__ == "EulerDiscreteScheduler" and fresh is not pipes.base.scheduler


# --- device -----------------------------------------------------------------------------------


def test_select_device_cpu():
    cfg = select_device("cpu", vae_tiling=True)
    assert cfg.device == "cpu" and cfg.dtype == torch.float32 and cfg.vae_tiling
    if not torch.cuda.is_available():
        assert select_device("auto").device in ("cpu", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "CUDA:0"])
def test_unavailable_cuda_is_model_unavailable(name):
    with pytest.raises(ModelUnavailable, match="CUDA"):
        select_device(name)


def test_unknown_device_is_model_unavailable():
    with pytest.raises(ModelUnavailable, match="unknown device"):
        select_device("tpu")


def test_offload_on_cpu_is_ignored_with_warning(pipes, caplog):
    cfg = select_device("cpu", offload="model", vae_slicing=True)
    with caplog.at_level(logging.WARNING, logger="pixelmill.engine.device"):
        prepare_pipeline(pipes.base, cfg)
    assert "needs CUDA" in caplog.text
    assert pipes.base.vae.use_slicing
    pipes.base.vae.disable_slicing()


def test_nan_guard():
    good = np.random.RandomState(0).rand(2, 8, 8, 3).astype(np.float32)
    nan_guard(good)
    nan_guard(torch.from_numpy(good))
    nan_guard([Image.fromarray((g * 255).astype("uint8")) for g in good])
    bad = good.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(GenerationFailed, match="image 1.*NaN"):
        nan_guard(bad)
    with pytest.raises(GenerationFailed, match="black"):
        nan_guard([Image.new("RGB", (8, 8))])


def test_compile_uses_in_place_module_compile(pipes, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    prepare_pipeline(pipes.base, select_device("cpu", compile=True))
    # Static shapes (buckets warmed at start), the UNet and the VAE decoder alike.
    assert calls == [("UNet2DConditionModel", {"mode": device.COMPILE_MODE, "fullgraph": False, "dynamic": False}),
                     ("Decoder", {"mode": device.COMPILE_MODE, "fullgraph": False, "dynamic": False})]


def test_cuda_graphs_compile_with_graphs_on_cuda_only(pipes, monkeypatch):
    from dataclasses import replace

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw["mode"]))
    cpu = select_device("cpu", compile=True, cuda_graphs=True)  # accepted, logged, no graphs
    assert cpu.compile_mode == device.COMPILE_MODE
    # The compile step alone, as a CUDA config would run it (no GPU here to place weights on).
    device._compile_unet(pipes.base, replace(cpu, device="cuda"))
    assert calls == [device.CUDA_GRAPHS_MODE, device.CUDA_GRAPHS_MODE]  # UNet and VAE decoder
    calls.clear()
    device._compile_unet(pipes.base, replace(cpu, device="cuda", cuda_graphs=False))
    assert calls == [device.COMPILE_MODE, device.COMPILE_MODE]
    # Each generation marks a new CUDA-graph step, only where graphs are in use.
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    device.begin_graph_step(cpu)
    device.begin_graph_step(replace(cpu, device="cuda", cuda_graphs=False))
    assert marks == []
    device.begin_graph_step(replace(cpu, device="cuda"))
    assert marks == [1]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({}, "turn on --compile"),
    ({"compile": True, "offload": "model"}, "not with --offload model"),
])
def test_cuda_graphs_without_compile_or_with_offload_is_refused(kwargs, reason):
    with pytest.raises(ModelUnavailable, match=reason):
        select_device("cpu", cuda_graphs=True, **kwargs)


def test_warmup_runs_a_tiny_generation(pipes):
    from pixelmill.engine.compile import warm_up

    assert len(warm_up(pipes.base, ((1, 64, 64),))) == 1
