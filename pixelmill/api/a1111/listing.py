"""A1111's listing routes (``/sdapi/v1/sd-models``, ``samplers``, ``schedulers``, ``loras`` …)
and the ControlNet extension's (``/controlnet/*``), answered from pixelmill's own catalog.

Each lists what this server can actually run, in A1111's shapes, so a client's menus
offer nothing that would then fail: samplers whose schedulers are installed, schedule
types some sampler runs, the ControlNet modules pixelmill implements. Features pixelmill
does not have (VAE choice, upscalers, embeddings) answer empty lists.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Depends

from pixelmill.api.a1111.catalog import base_names
from pixelmill.api.a1111.controlnet import MODULES
from pixelmill.api.a1111.samplers import AUTOMATIC, SCHEDULES, supported_samplers
from pixelmill.api.auth import current_principal
from pixelmill.api.deps import ServicesDep
from pixelmill.auth.bind import is_loopback
from pixelmill.core.policy import MAX_CONTROLNETS
from pixelmill.registry.models_dir import ModelKind

# Errors in A1111's body (api.errors.A1111_SHAPE), documented so in /openapi.json (api.openapi).
router = APIRouter(tags=["AUTOMATIC1111"], dependencies=[Depends(current_principal)])

CONTROLNET_VERSION = 2
"""The sd-webui-controlnet API version whose unit format pixelmill reads."""


@router.get("/sdapi/v1/sd-models")
async def sd_models(services: ServicesDep) -> list[dict[str, Any]]:
    """Base models: the default first. ``title`` is what ``sd_model_checkpoint`` takes."""
    entries = {entry.name: entry for entry in services.registry.list(ModelKind.checkpoint)}
    return [
        {"title": name, "model_name": name, "hash": None, "sha256": None,
         "filename": entries[name].path.name if name in entries else name, "config": None}
        for name in base_names(services)
    ]


@router.post("/sdapi/v1/refresh-checkpoints")
async def refresh_checkpoints(services: ServicesDep) -> None:
    """Rescan the models directory (checkpoints, LoRAs and ControlNets together)."""
    await asyncio.to_thread(services.registry.refresh)


@router.post("/sdapi/v1/refresh-loras")
async def refresh_loras(services: ServicesDep) -> None:
    """Rescan the models directory (the same scan as refresh-checkpoints)."""
    await asyncio.to_thread(services.registry.refresh)


@router.get("/sdapi/v1/samplers")
async def samplers() -> list[dict[str, Any]]:
    """The samplers this server runs; ``options.scheduler`` is what ``Automatic`` means for each."""
    return [{"name": sampler.name, "aliases": list(sampler.aliases),
             "options": {"scheduler": sampler.default} if sampler.default else {}}
            for sampler in supported_samplers()]


@router.get("/sdapi/v1/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    """Schedule types (``Automatic`` and those some available sampler runs), in A1111's order."""
    runnable = {name for sampler in supported_samplers() for name in sampler.runs}
    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None,
             "default_rho": s.default_rho, "need_inner_model": s.need_inner_model}
            for s in SCHEDULES if s is AUTOMATIC or s.name in runnable]


@router.get("/sdapi/v1/loras")
async def loras(services: ServicesDep) -> list[dict[str, Any]]:
    """LoRAs of the models directory; use them as ``<lora:name:weight>`` in the prompt."""
    return [{"name": entry.name, "alias": entry.name, "path": entry.path.name, "metadata": {}}
            for entry in services.registry.list(ModelKind.lora)]


@router.get("/sdapi/v1/sd-vae")
async def sd_vae() -> list[dict[str, Any]]:
    """Empty: each model runs with its own VAE (``sd_vae`` other than Automatic is refused)."""
    return []


@router.get("/sdapi/v1/upscalers")
async def upscalers() -> list[dict[str, Any]]:
    """Empty: upscalers serve hires. fix and extras, which this server does not run."""
    return []


@router.get("/sdapi/v1/latent-upscale-modes")
async def latent_upscale_modes() -> list[dict[str, Any]]:
    """Empty: latent upscale modes serve hires. fix, which this server does not run."""
    return []


@router.get("/sdapi/v1/embeddings")
async def embeddings() -> dict[str, Any]:
    """No textual-inversion embeddings are loaded."""
    return {"loaded": {}, "skipped": {}}


@router.get("/sdapi/v1/scripts")
async def scripts() -> dict[str, list[str]]:
    """Scripts by name: only the always-on ``controlnet`` (no selectable scripts).

    webuiapi adds always-on entries for each extension it finds listed here, so only
    what this server runs is listed.
    """
    return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}


@router.get("/sdapi/v1/cmd-flags")
async def cmd_flags(services: ServicesDep) -> dict[str, Any]:
    """The few A1111 command-line flags with a pixelmill meaning."""
    settings = services.settings
    return {"api": True, "nowebui": True, "listen": not is_loopback(settings.host),
            "api_auth": None, "ckpt": settings.model, "lowvram": False, "medvram": False}


@router.get("/sdapi/v1/memory")
async def memory() -> dict[str, Any]:
    """The API host's RAM; accelerator memory is the workers' (see ``/health`` and ``/metrics``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    return {"ram": {"free": free, "used": total - free, "total": total},
            "cuda": {"error": "accelerator memory is not reported by the API process"}}


@router.get("/controlnet/version")
async def controlnet_version() -> dict[str, int]:
    """The ControlNet extension API version pixelmill speaks."""
    return {"version": CONTROLNET_VERSION}


@router.get("/controlnet/model_list")
async def controlnet_models(services: ServicesDep) -> dict[str, list[str]]:
    """ControlNets of the models directory (a unit's ``model``)."""
    return {"model_list": [entry.name for entry in services.registry.list(ModelKind.controlnet)]}


@router.get("/controlnet/module_list")
async def controlnet_modules() -> dict[str, Any]:
    """Preprocessors pixelmill runs (a unit's ``module``)."""
    names = [name for name in MODULES if " " not in name]  # the long invert alias is the same module
    details = {name: {"sliders": [], "model_free": False} for name in names}
    return {"module_list": names, "module_detail": details}


@router.get("/controlnet/settings")
async def controlnet_settings() -> dict[str, int]:
    """How many ControlNet units a request may use."""
    return {"control_net_unit_count": MAX_CONTROLNETS, "control_net_max_models_num": MAX_CONTROLNETS}
