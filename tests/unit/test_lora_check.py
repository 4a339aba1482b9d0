"""LoRA files checked against base checkpoints from safetensors headers alone.

Bad LoRAs are made by rewriting the demo LoRA's tensors; single-file and sharded bases
by rewriting the demo checkpoint's. Nothing here loads a model.
"""

from __future__ import annotations

import builtins
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pixelmill.registry import lora_check
from pixelmill.core.errors import InvalidRequest
from pixelmill.registry.lora_check import (
    UnetLayout, block_pairs, check_fits, compatible_bases, from_sgm, inspect_lora, to_sgm,
)
from pixelmill.registry.models_dir import ModelKind
from tests.support.registry import private_copy, refreshed_registry

DEMO_LORA = "loras/demo-style.safetensors"


@pytest.fixture()
def models(demo_models: Path, tmp_path: Path) -> Path:
    """A private copy of the demo models directory (tests add and rewrite files)."""
    return private_copy(demo_models, tmp_path)



def _rewrite(models: Path, name: str, edit) -> Path:
    """Save ``edit(tensors)`` of the demo LoRA as ``loras/<name>.safetensors``."""
    tensors = load_file(models / DEMO_LORA)
    path = models / "loras" / f"{name}.safetensors"
    save_file(edit(tensors), path)
    return path


def _rename(tensors: dict, rename) -> dict:
    return {rename(k): v for k, v in tensors.items()}


def _demo(models: Path):
    return refreshed_registry(models).find(ModelKind.checkpoint, "demo")


def test_demo_lora_is_read_and_fits_the_demo_model(models):
    info = inspect_lora(models / DEMO_LORA)
    assert info.format == "diffusers" and info.rank == 4 and info.ranks == (4,)
    assert info.components == ("unet", "text_encoder", "text_encoder_2")
    assert len(info.targets) == 80 and info.size_bytes == (models / DEMO_LORA).stat().st_size
    check_fits(info, _demo(models))
    assert compatible_bases(models / DEMO_LORA, refreshed_registry(models)) == ["demo"]


def test_peft_names_fit(models):
    def to_peft(key: str) -> str:
        for old, new in ((".lora_linear_layer.down.", ".lora_A."), (".lora_linear_layer.up.", ".lora_B."),
                         (".lora.down.", ".lora_A."), (".lora.up.", ".lora_B.")):
            key = key.replace(old, new)
        return key

    path = _rewrite(models, "peft", lambda t: _rename(t, to_peft))
    info = inspect_lora(path)
    assert info.format == "peft" and len(info.targets) == 80
    check_fits(info, _demo(models))


def _kohya(key: str, unet_name=lambda m: m) -> str:
    """The kohya name of a demo LoRA tensor (diffusers UNet names by default)."""
    component, rest = key.split(".", 1)
    for suffix, kohya in ((".lora.down.weight", ".lora_down.weight"), (".lora.up.weight", ".lora_up.weight"),
                          (".lora_linear_layer.down.weight", ".lora_down.weight"),
                          (".lora_linear_layer.up.weight", ".lora_up.weight")):
        if rest.endswith(suffix):
            module = rest[: -len(suffix)]
            break
    if component == "unet":
        module = unet_name(module)
    elif not module.startswith("text_model."):
        module = "text_model." + module  # kohya always writes HF CLIP's full names
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + module.replace(".", "_") + kohya


def _with_alphas(tensors: dict) -> dict:
    alphas = {k.replace(".lora_down.weight", ".alpha"): np.array(4.0, dtype=np.float32)
              for k in tensors if k.endswith(".lora_down.weight")}
    return tensors | alphas


def test_kohya_names_with_diffusers_unet_blocks_fit(models):
    path = _rewrite(models, "kohya", lambda t: _with_alphas(_rename(t, _kohya)))
    info = inspect_lora(path)
    assert info.format == "kohya" and info.components == ("unet", "text_encoder", "text_encoder_2")
    check_fits(info, _demo(models))


def test_kohya_names_with_sgm_unet_blocks_fit(models):
    pairs = block_pairs(lora_check.base_shapes(_demo(models)).layout)
    path = _rewrite(models, "kohya-sgm",
                    lambda t: _with_alphas(_rename(t, lambda k: _kohya(k, lambda m: to_sgm(m, pairs)))))
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in load_file(path)
    check_fits(path, _demo(models))


@pytest.mark.parametrize(
    ("diffusers", "sgm"),
    [
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        ("down_blocks.2.resnets.0.time_emb_proj", "input_blocks.7.0.emb_layers.1"),
        ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
        ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
        ("up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2",
         "output_blocks.2.1.transformer_blocks.9.ff.net.2"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        ("up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
        ("time_embedding.linear_1", "time_embed.0"),
    ],
)
def test_sdxl_names_map_to_the_original_sgm_names(diffusers, sgm):
    config_file = Path(lora_check.__file__).parents[1] / "engine/sdxl_config/unet/config.json"
    config = json.loads(config_file.read_text())
    pairs = block_pairs(UnetLayout.from_config(config))
    assert to_sgm(diffusers, pairs) == sgm and from_sgm(sgm, pairs) == diffusers


def test_sgm_mapping_agrees_with_diffusers_own_conversion(models):
    """diffusers' single-file converter is the oracle for every demo UNet weight."""
    torch = pytest.importorskip("torch")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    folder = models / "checkpoints/demo/unet"
    config = json.loads((folder / "config.json").read_text())
    pairs = block_pairs(UnetLayout.from_config(config))
    keys = list(load_file(folder / "diffusion_pytorch_model.safetensors"))
    sgm = {"model.diffusion_model." + to_sgm(k.rsplit(".", 1)[0], pairs) + "." + k.rsplit(".", 1)[1]:
           torch.tensor([float(i)]) for i, k in enumerate(keys)}
    converted = convert_ldm_unet_checkpoint(sgm, config)
    assert {k: int(v.item()) for k, v in converted.items()} == {k: i for i, k in enumerate(keys)}


# --- refusals -----------------------------------------------------------------------


def _refused(path: Path, base, match: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest, match=match) as info:
        check_fits(path, base)
    assert info.value.param == "file"
    return info.value


def test_wrong_shape_names_the_tensor(models):
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"

    def widen(t):
        t[key] = np.zeros((64, 4), dtype=np.float32)
        return t

    _refused(_rewrite(models, "wide", widen), _demo(models), rf"'{key}'.*up shape \[64, 4\]")


def test_consistent_but_wrong_input_size_is_refused(models):
    stem = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer"

    def resize(t):
        t[f"{stem}.down.weight"] = np.zeros((4, 48), dtype=np.float32)
        return t

    _refused(_rewrite(models, "input", resize), _demo(models), r"q_proj.*does not fit.*\[4, 48\]")


def test_unknown_module_is_refused(models):
    path = _rewrite(models, "unknown", lambda t: _rename(t, lambda k: k.replace("attn1.to_k", "attn1.to_zz")))
    _refused(path, _demo(models), r"to_zz.*does not have")


def test_missing_half_is_refused(models):
    key = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight"
    path = _rewrite(models, "half", lambda t: {k: v for k, v in t.items() if k != key})
    _refused(path, _demo(models), "no up half")


def test_inconsistent_rank_is_refused(models):
    key = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight"

    def rank3(t):
        t[key] = np.zeros((32, 3), dtype=np.float32)
        return t

    _refused(_rewrite(models, "rank", rank3), _demo(models), "inconsistent with rank 4")


def test_non_lora_tensors_are_refused(models):
    path = _rewrite(models, "ckpt", lambda t: t | {"model.diffusion_model.out.2.weight": np.zeros((4, 4))})
    _refused(path, _demo(models), "not a LoRA tensor")
    dora = "unet.mid_block.attentions.0.proj_in.lora_magnitude_vector"
    path = _rewrite(models, "dora", lambda t: t | {dora: np.zeros(4)})
    _refused(path, _demo(models), "not a LoRA tensor")


def test_mixed_formats_are_refused(models):
    te1_kohya = lambda k: _kohya(k) if k.startswith("text_encoder.") else k  # noqa: E731
    path = _rewrite(models, "mixed", lambda t: _rename(t, te1_kohya))
    _refused(path, _demo(models), "mixes LoRA formats")


def _header_file(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def _one_tensor(path: Path, shape: list[int], offsets: list[int]) -> Path:
    entry = {"dtype": "F32", "shape": shape, "data_offsets": offsets}
    return _header_file(path, json.dumps({"unet.a.lora_A.weight": entry}).encode())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (lambda p: p.write_bytes(b"\x80\x04\x95pickle"), "shorter than|out of range"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 400), "out of range"),
        (lambda p: _header_file(p, b"{}", length=10**12), "out of range"),
        (lambda p: _header_file(p, b"not json at all"), "not JSON"),
        (lambda p: _header_file(p, b"[1, 2]"), "not a JSON object"),
        (lambda p: _one_tensor(p, [4, 8], [0, 128]), "bad safetensors header"),  # data past the end
        (lambda p: _one_tensor(p, [-1], [0, 0]), "bad safetensors header"),
        (lambda p: _header_file(p, b"{}"), "no LoRA tensors"),
        # issue 19 §7: RecursionError in json, a 500 on upload and listing
        (lambda p: _header_file(p, b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (lambda p: _header_file(p, b'{"a":' * 50_000 + b"1" + b"}" * 50_000), "nested too deeply"),
    ],
)
def test_files_that_are_not_safetensors_loras_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    content(path)
    with pytest.raises(InvalidRequest, match=match) as info:
        inspect_lora(path)
    assert info.value.param == "file"


def test_pickle_files_are_never_opened(tmp_path, monkeypatch):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(b"\x80\x04pickle")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        assert not str(file).endswith(".ckpt"), "a pickle file was opened"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(InvalidRequest, match="never opened"):
        inspect_lora(path)


# --- bases: refiner, single file, sharded ---------------------------------------------


def test_lora_with_text_encoder_does_not_fit_a_refiner_layout(models):
    refiner = models / "checkpoints" / "refiner"
    shutil.copytree(models / "checkpoints" / "demo", refiner)
    shutil.rmtree(refiner / "text_encoder")
    index = json.loads((refiner / "model_index.json").read_text()) | {"text_encoder": [None, None]}
    (refiner / "model_index.json").write_text(json.dumps(index))
    registry = refreshed_registry(models)
    assert registry.find(ModelKind.checkpoint, "refiner").listed_kind == "refiner"
    _refused(models / DEMO_LORA, registry.find(ModelKind.checkpoint, "refiner"), "adapts text_encoder")
    unet_only = _rewrite(models, "unet-only", lambda t: {k: v for k, v in t.items() if k.startswith("unet.")})
    assert compatible_bases(unet_only, registry) == ["demo", "refiner"]


def _sgm_single_file(models: Path) -> Path:
    """The demo checkpoint as an original-layout (SGM) single file, tensors all zeros."""
    folder = models / "checkpoints" / "demo"
    pairs = block_pairs(UnetLayout.from_config(json.loads((folder / "unet/config.json").read_text())))
    out = {}
    for key, value in load_file(folder / "unet/diffusion_pytorch_model.safetensors").items():
        module, leaf = key.rsplit(".", 1)
        out[f"model.diffusion_model.{to_sgm(module, pairs)}.{leaf}"] = np.zeros(value.shape, np.float16)
    for key, value in load_file(folder / "text_encoder/model.safetensors").items():
        te1 = "conditioner.embedders.0.transformer.text_model." + key.removeprefix("text_model.")
        out[te1] = np.zeros(value.shape, np.float16)
    te2 = load_file(folder / "text_encoder_2/model.safetensors")
    prefix = "conditioner.embedders.1.model.transformer.resblocks"
    for layer in range(3):
        hf = f"text_model.encoder.layers.{layer}"
        q = te2[f"{hf}.self_attn.q_proj.weight"].shape
        out[f"{prefix}.{layer}.attn.in_proj_weight"] = np.zeros((3 * q[0], q[1]), np.float16)
        names = (("self_attn.out_proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
        for hf_name, oc in names:
            out[f"{prefix}.{layer}.{oc}.weight"] = np.zeros(te2[f"{hf}.{hf_name}.weight"].shape, np.float16)
    path = models / "checkpoints" / "demo-sgm.safetensors"
    save_file(out, path)
    return path


def test_single_file_sgm_checkpoint_is_a_base(models):
    _sgm_single_file(models)
    registry = refreshed_registry(models)
    single = registry.find(ModelKind.checkpoint, "demo-sgm")
    shapes = lora_check.base_shapes(single)
    folder = lora_check.base_shapes(_demo(models))
    assert shapes.layout == folder.layout and shapes.modules["unet"] == folder.modules["unet"]
    assert shapes.modules["text_encoder"] == folder.modules["text_encoder"]
    assert shapes.modules["text_encoder_2"].items() <= folder.modules["text_encoder_2"].items()
    check_fits(models / DEMO_LORA, single)
    kohya = _rewrite(models, "kohya", lambda t: _with_alphas(_rename(t, _kohya)))
    assert compatible_bases(models / DEMO_LORA, registry) == ["demo", "demo-sgm"]
    assert compatible_bases(kohya, registry) == ["demo", "demo-sgm"]
    up = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"
    wide = _rewrite(models, "wide", lambda t: t | {up: np.zeros((8, 4), np.float32)})
    assert compatible_bases(wide, registry) == []


def test_sharded_base_is_read_through_its_index(models):
    unet = models / "checkpoints" / "demo" / "unet"
    tensors = load_file(unet / "diffusion_pytorch_model.safetensors")
    keys = sorted(tensors)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: tensors[k] for k in names}, unet / shard)
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    check_fits(models / DEMO_LORA, _demo(models))


def test_conv_lora_on_a_resnet_is_checked(models):
    conv = "unet.down_blocks.0.resnets.0.conv1.lora"

    def with_conv(kernel):
        return lambda t: t | {f"{conv}.down.weight": np.zeros((4, 16, kernel, kernel), np.float32),
                              f"{conv}.up.weight": np.zeros((16, 4, 1, 1), np.float32)}

    check_fits(_rewrite(models, "conv", with_conv(3)), _demo(models))
    _refused(_rewrite(models, "conv5", with_conv(5)), _demo(models), "input side")


def test_compatibility_is_cached_until_the_file_changes(models, monkeypatch):
    registry = refreshed_registry(models)
    path = _rewrite(models, "copy", lambda t: t)
    calls = []
    real = lora_check.read_header
    monkeypatch.setattr(lora_check, "read_header", lambda p: calls.append(Path(p).name) or real(p))
    assert compatible_bases(path, registry) == ["demo"]
    first = len(calls)
    assert compatible_bases(path, registry) == ["demo"] and len(calls) == first
    save_file({k: v for k, v in load_file(path).items() if "text_encoder" not in k}, path)
    assert compatible_bases(path, registry) == ["demo"] and "copy.safetensors" in calls[first:]
