"""Loader tests: safetensors only, folder loading, single-file round trip, tokenizers."""

from __future__ import annotations

import builtins
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pixelmill.engine import loader
from pixelmill.core.errors import ModelUnavailable


@pytest.fixture(scope="module")
def folder_pipe(models_dir, cpu):
    return loader.load_folder(models_dir / "checkpoints" / "demo", cpu)


def _image(pipe, seed=3):
    return pipe("a red fox", num_inference_steps=2, width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


# --- pickle refusal ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth", ".CKPT"])
def test_pickle_checkpoints_refused_without_opening(tmp_path, cpu, monkeypatch, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if str(file) == str(path):
            opened.append(file)
            raise AssertionError("the checkpoint was opened")
        return real_open(file, *args, **kwargs)

    def no_torch_load(*args, **kwargs):
        opened.append(args)
        raise AssertionError("torch.load called")

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(ModelUnavailable, match="pickle"):
        loader.load_single_file(path, cpu)
    assert opened == []


def test_unknown_extension_refused(tmp_path, cpu):
    with pytest.raises(ModelUnavailable, match="safetensors"):
        loader.load_single_file(tmp_path / "model.onnx", cpu)


def test_folder_with_only_pickle_weights_is_unavailable(models_dir, cpu, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(models_dir / "checkpoints" / "demo", folder)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ModelUnavailable):
        loader.load_folder(folder, cpu)


# --- folder / hub --------------------------------------------------------------------------


def test_load_folder_returns_prepared_pipeline(folder_pipe):
    from diffusers import StableDiffusionXLPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert isinstance(folder_pipe, StableDiffusionXLPipeline)
    assert folder_pipe.unet.dtype == torch.float32
    assert all(isinstance(p, AttnProcessor2_0) for p in folder_pipe.unet.attn_processors.values())
    assert _image(folder_pipe).shape == (1, 64, 64, 3)


def test_load_folder_without_model_index(tmp_path, cpu):
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        loader.load_folder(tmp_path, cpu)


def test_corrupt_weights_become_model_unavailable(models_dir, cpu, tmp_path):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(models_dir / "checkpoints" / "demo", folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelUnavailable, match="corrupt"):
        loader.load_folder(folder, cpu)


def test_load_hub_offline_missing_repo(cpu):
    with pytest.raises(ModelUnavailable, match="no-such-org/no-such-model"):
        loader.load_hub("no-such-org/no-such-model", cpu, local_files_only=True)


# --- shipped SDXL config -------------------------------------------------------------------


def test_shipped_sdxl_config_is_the_real_architecture():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config_dir = loader.sdxl_config_dir()
    index = json.loads((config_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    # SDXL base 1.0: 2.567 B UNet parameters, 83.65 M VAE parameters.
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 2567
    assert round(sum(p.numel() for p in vae.parameters()) / 1e5) == 837


# --- tokenizers ------------------------------------------------------------------------------


def test_tokenizers_from_sibling_folder(models_dir, tmp_path):
    import shutil

    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"")
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(models_dir / "checkpoints" / "demo" / sub, tmp_path / "mine.tokenizers" / sub)
    tok, tok2 = loader.resolve_tokenizers(ckpt, loader.sdxl_config_dir())
    assert tok.model_max_length == 77 and tok2.pad_token == "!"


def test_missing_tokenizers_explain_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ckpt = tmp_path / "lonely.safetensors"
    with pytest.raises(ModelUnavailable, match="lonely.tokenizers"):
        loader.resolve_tokenizers(ckpt, loader.sdxl_config_dir())


# --- single file: diffusers -> original SGM layout converter (test helper only) ------------

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _rename_resnet(rest: str) -> str:
    for new, old in _RESNET:
        rest = rest.replace(new, old)
    return rest


def _unet_to_sgm_name(key: str, config) -> str:
    for module, original in _UNET_TOP.items():
        if key.startswith(module + "."):
            return original + key[len(module):]
    parts, layers = key.split("."), config.layers_per_block
    if parts[0] == "mid_block":  # resnet 0, attention, resnet 1
        sub, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if sub == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_rename_resnet(rest)}"
    kind, block, sub, j = parts[0], int(parts[1]), parts[2], int(parts[3])
    rest = ".".join(parts[4:])
    if kind == "down_blocks":
        index = 1 + block * (layers + 1)
        if sub == "downsamplers":
            return f"input_blocks.{index + layers}.0.op.{rest.removeprefix('conv.')}"
        slot = f"{index + j}.0.{_rename_resnet(rest)}" if sub == "resnets" else f"{index + j}.1.{rest}"
        return f"input_blocks.{slot}"
    index = block * (layers + 1)
    if sub == "upsamplers":  # after the attention when the block has one
        has_attn = config.up_block_types[block].startswith("CrossAttn")
        return f"output_blocks.{index + layers}.{2 if has_attn else 1}.{rest}"
    slot = f"{index + j}.0.{_rename_resnet(rest)}" if sub == "resnets" else f"{index + j}.1.{rest}"
    return f"output_blocks.{slot}"


def _unet_to_sgm(unet) -> dict[str, torch.Tensor]:
    return {"model.diffusion_model." + _unet_to_sgm_name(k, unet.config): v
            for k, v in unet.state_dict().items()}


def _vae_to_sgm(vae) -> dict[str, torch.Tensor]:
    n_up = len(vae.config.up_block_types)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for k in range(2):
            name = name.replace(f"mid_block.resnets.{k}.", f"mid.block_{k + 1}.")
        if "mid_block.attentions.0." in name:
            name = name.replace("mid_block.attentions.0.", "mid.attn_1.")
            for new, old in attn.items():
                name = name.replace(f"attn_1.{new}.", f"attn_1.{old}.")
            if value.ndim == 2:  # the original VAE uses 1x1 convolutions here
                value = value[:, :, None, None]
        for i in range(len(vae.config.down_block_types)):
            name = name.replace(f"down_blocks.{i}.resnets.", f"down.{i}.block.")
            name = name.replace(f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample.")
        for i in range(n_up):
            name = name.replace(f"up_blocks.{i}.resnets.", f"up.{n_up - 1 - i}.block.")
            name = name.replace(f"up_blocks.{i}.upsamplers.0.", f"up.{n_up - 1 - i}.upsample.")
        out["first_stage_model." + name] = value
    return out


def _clip_l_to_sgm(te) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.0.transformer."
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in te.state_dict().items()}


def _open_clip_to_sgm(te) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.1.model."
    sd = te.state_dict()
    out = {prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           prefix + "text_projection": sd["text_projection.weight"].T.contiguous()}
    renames = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
               ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]
    for i in range(te.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
        for key, value in sd.items():
            if key.startswith(src) and "_proj." not in key.replace("out_proj.", "x."):
                name = key[len(src):]
                for new, old in renames:
                    name = name.replace(new, old)
                out[dst + name] = value
    return out


def write_sgm_checkpoint(pipe, path) -> None:
    """Save ``pipe`` as an original-layout (SGM) single-file SDXL checkpoint."""
    state = {**_unet_to_sgm(pipe.unet), **_vae_to_sgm(pipe.vae),
             **_clip_l_to_sgm(pipe.text_encoder), **_open_clip_to_sgm(pipe.text_encoder_2)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def test_single_file_round_trip_matches_folder(models_dir, cpu, folder_pipe, tmp_path):
    ckpt = tmp_path / "demo-single.safetensors"
    write_sgm_checkpoint(folder_pipe, ckpt)
    single = loader.load_single_file(ckpt, cpu, config_dir=models_dir / "checkpoints" / "demo")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected = getattr(folder_pipe, name).state_dict()
        got = getattr(single, name).state_dict()
        assert set(got) == set(expected), name
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    np.testing.assert_array_equal(_image(single), _image(folder_pipe))


def test_single_file_missing(tmp_path, cpu):
    with pytest.raises(ModelUnavailable, match="not found"):
        loader.load_single_file(tmp_path / "absent.safetensors", cpu)
