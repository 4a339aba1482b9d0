"""Prompt weighting and long prompts through compel, on the tiny demo model (2 steps, 64 px).

Equality of images uses ``assert_same_image`` (max 2/255 per channel); embeddings are
compared with ``torch.testing.assert_close`` at float32 tolerance.
"""

from __future__ import annotations

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pixelmill.engine.prompts import (PromptEmbeds, chunk_count, encode_prompts,  # noqa: E402
                                      encode_prompts_refiner, needs_compel, token_count)
from pixelmill.core.errors import InvalidRequest  # noqa: E402
from tests.support.images import assert_same_image, gradient, pixels  # noqa: E402

PROMPT = "a red cat sitting on the mat, photo"
CHUNK = 77


@pytest.fixture(scope="module")
def pipe(pipes):
    return pipes.base


def _images(pipe, prompts=None, negatives=None, embeds: PromptEmbeds | None = None, **kwargs):
    count = len(prompts) if prompts is not None else embeds.prompt_embeds.shape[0]
    text = {"prompt": prompts, "negative_prompt": negatives} if embeds is None else embeds.pipeline_kwargs()
    pipe.set_progress_bar_config(disable=True)
    return pipe(**text, width=64, height=64, num_inference_steps=2, guidance_scale=5.0,
                generator=[torch.Generator("cpu").manual_seed(7 + i) for i in range(count)], **kwargs).images


def _differ(a: Image.Image, b: Image.Image) -> bool:
    return np.abs(pixels(a) - pixels(b)).max() > 2


def _long_prompt(tokenizer, tokens: int = 200) -> str:
    words = ["golden", "hour", "light", "over", "misty", "hills", "with", "tall", "pine", "trees"]
    parts: list[str] = []
    while token_count(", ".join(parts), tokenizer) < tokens:
        parts.append(words[len(parts) % len(words)])
    return ", ".join(parts)


def test_plain_batch_is_left_to_the_pipeline(pipe):
    assert encode_prompts(pipe, [PROMPT, "a dog"], ["blurry", "dark"]) is None
    assert encode_prompts(pipe, [PROMPT], None) is None


def test_needs_compel(pipe):
    tok = pipe.tokenizer
    assert not needs_compel(PROMPT, tok)
    assert needs_compel("a (cat:1.2)", tok)
    assert needs_compel(r"a \(cat\)", tok)
    assert needs_compel("a BREAK cat", tok)
    assert needs_compel(_long_prompt(tok, 78), tok)
    assert not needs_compel(_long_prompt(tok, 60), tok)


@pytest.mark.parametrize("negatives", [None, ["blurry, dark"]])
def test_plain_prompt_through_compel_gives_the_string_path_image(pipe, negatives):
    embeds = encode_prompts(pipe, [PROMPT], negatives, always=True)
    expected = pipe.encode_prompt([PROMPT], device=pipe.device, negative_prompt=negatives,
                                  do_classifier_free_guidance=True)
    for got, want in zip((embeds.prompt_embeds, embeds.negative_prompt_embeds,
                          embeds.pooled_prompt_embeds, embeds.negative_pooled_prompt_embeds), expected):
        torch.testing.assert_close(got, want)
    assert_same_image(_images(pipe, embeds=embeds)[0], _images(pipe, [PROMPT], negatives)[0])


def test_weight_one_is_the_plain_prompt(pipe):
    embeds = encode_prompts(pipe, ["a red (cat:1.0) sitting on the mat, photo"], None)
    assert embeds is not None
    assert_same_image(_images(pipe, embeds=embeds)[0], _images(pipe, [PROMPT])[0])


# The demo's random text encoders barely react to one word: weight most of the prompt.
@pytest.mark.parametrize("weighted", ["(a red cat sitting on the mat:1.5), photo",
                                      "[[a red cat sitting on the mat]], photo"])
def test_weights_change_the_image(pipe, weighted):
    embeds = encode_prompts(pipe, [weighted], None)
    assert _differ(_images(pipe, embeds=embeds)[0], _images(pipe, [PROMPT])[0])


def _truncation_warnings():
    class Catch(logging.Handler):
        messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Catch()
    logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to root
    level = logger.level
    logger.setLevel(logging.WARNING)  # an engine started earlier may have set it to ERROR

    def done() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    logger.addHandler(handler)
    return handler, done


def test_long_prompt_is_chunked_and_its_tail_counts(pipe):
    long = _long_prompt(pipe.tokenizer, 200)
    handler, done = _truncation_warnings()
    try:
        embeds = encode_prompts(pipe, [long], None)
        chunked = _images(pipe, embeds=embeds)[0]
        assert not [m for m in handler.messages if "truncated" in m]
        truncated = _images(pipe, [long])[0]  # the string path keeps the first 77 tokens
        assert [m for m in handler.messages if "truncated" in m], "the check must see the warning"
    finally:
        done()
    assert embeds.prompt_embeds.shape[1] == 3 * CHUNK
    assert embeds.negative_prompt_embeds.shape == embeds.prompt_embeds.shape
    assert _differ(chunked, truncated)


def test_break_starts_a_new_chunk(pipe):
    embeds = encode_prompts(pipe, ["a red cat BREAK on the mat"], None)
    alone = encode_prompts(pipe, ["a red cat"], None, always=True)
    assert embeds.prompt_embeds.shape[1] == 2 * CHUNK
    torch.testing.assert_close(embeds.prompt_embeds[:, :CHUNK], alone.prompt_embeds)


@pytest.mark.parametrize("negatives", [None, [""], ["   "]])
def test_no_negative_prompt_gives_zeros(pipe, negatives):
    embeds = encode_prompts(pipe, ["a (cat:1.2)"], negatives)
    assert embeds.negative_prompt_embeds.shape == embeds.prompt_embeds.shape
    assert embeds.negative_pooled_prompt_embeds.shape == embeds.pooled_prompt_embeds.shape
    assert not embeds.negative_prompt_embeds.any() and not embeds.negative_pooled_prompt_embeds.any()


def test_batch_rows_are_each_prompt_alone_plus_empty_padding(pipe):
    """Row i equals prompt i encoded alone on its own tokens; the rest is empty-prompt chunks.

    Pooled rows are equal outright. A short row padded to a long one is a different
    conditioning (more context tokens), so images of such rows are not compared.
    """
    prompts = ["a red (cat:1.4) on the [mat]", _long_prompt(pipe.tokenizer, 200)]
    negatives = ["blurry", ""]
    batch = encode_prompts(pipe, prompts, negatives)
    empty = encode_prompts(pipe, [""], ["x"], always=True).prompt_embeds[0]  # one empty chunk
    assert batch.prompt_embeds.shape[:2] == (2, 3 * CHUNK)
    for row, (prompt, negative) in enumerate(zip(prompts, negatives)):
        alone = encode_prompts(pipe, [prompt], [negative], always=True)
        for got, want in ((batch.prompt_embeds[row], alone.prompt_embeds[0]),
                          (batch.negative_prompt_embeds[row], alone.negative_prompt_embeds[0])):
            size = want.shape[0] if want.any() else got.shape[0]  # zero rows fill the width
            torch.testing.assert_close(got[:size], want[:size])
            if want.any():
                torch.testing.assert_close(got[size:], empty.repeat(len(got[size:]) // CHUNK, 1))
        torch.testing.assert_close(batch.pooled_prompt_embeds[row], alone.pooled_prompt_embeds[0])
        torch.testing.assert_close(batch.negative_pooled_prompt_embeds[row],
                                   alone.negative_pooled_prompt_embeds[0])
    assert not batch.negative_prompt_embeds[1].any()


def test_chunk_count_predicts_the_encoded_length(pipe):
    for prompt in [PROMPT, "", "(a cat:1.2)", "a BREAK b", _long_prompt(pipe.tokenizer, 200),
                   "(" + _long_prompt(pipe.tokenizer, 150) + ":0.8) BREAK [end]"]:
        encoded = encode_prompts(pipe, [prompt], None, always=True).prompt_embeds
        assert chunk_count(pipe, prompt) == encoded.shape[1] // CHUNK, prompt


def test_rows_of_equal_length_batch_like_alone(pipe):
    prompts = ["a red (cat:1.4) on the [mat]", PROMPT]
    batch = _images(pipe, embeds=encode_prompts(pipe, prompts, None))
    alone = _images(pipe, embeds=encode_prompts(pipe, prompts[:1], None))
    assert_same_image(batch[0], alone[0])


def test_embeddings_match_the_pipelines_device_and_dtype(pipe):
    embeds = encode_prompts(pipe, ["(a cat:1.2)"], None)
    for tensor in embeds.pipeline_kwargs().values():
        assert tensor.device == pipe._execution_device and tensor.dtype == pipe.text_encoder_2.dtype
        assert not tensor.requires_grad


def test_clip_skip_matches_the_string_path(pipe):
    embeds = encode_prompts(pipe, [PROMPT], ["blurry"], clip_skip=1, always=True)
    expected = pipe.encode_prompt([PROMPT], device=pipe.device, negative_prompt=["blurry"],
                                  do_classifier_free_guidance=True, clip_skip=1)
    torch.testing.assert_close(embeds.prompt_embeds, expected[0])
    torch.testing.assert_close(embeds.negative_prompt_embeds, expected[1])  # diffusers: no skip here
    plain = encode_prompts(pipe, [PROMPT], ["blurry"], always=True)
    assert not torch.allclose(embeds.prompt_embeds, plain.prompt_embeds)


@pytest.mark.parametrize("offset", [0, 5])
def test_clip_skip_beyond_the_encoders_layers_is_refused(pipe, offset):
    layers = pipe.text_encoder.config.num_hidden_layers
    with pytest.raises(InvalidRequest) as caught:
        encode_prompts(pipe, ["(a cat:1.2)"], None, clip_skip=layers + offset)
    assert caught.value.param == "clip_skip"


def test_whitespace_only_emphasis_encodes(pipe):
    assert encode_prompts(pipe, ["a [ ] b ( ) [c]"], None).prompt_embeds.shape[1] == CHUNK


def test_refiner_embeddings_match_its_string_path(models_dir, pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        models_dir / "checkpoints" / "demo-refiner", local_files_only=True, add_watermarker=False)
    assert encode_prompts_refiner(refiner, [PROMPT], None) is None
    embeds = encode_prompts_refiner(refiner, ["a red (cat:1.0) sitting on the mat, photo"], ["blurry"])
    expected = refiner.encode_prompt([PROMPT], device=refiner.device, negative_prompt=["blurry"],
                                     do_classifier_free_guidance=True)
    for got, want in zip((embeds.prompt_embeds, embeds.negative_prompt_embeds,
                          embeds.pooled_prompt_embeds, embeds.negative_pooled_prompt_embeds), expected):
        torch.testing.assert_close(got, want)
    image = {"image": gradient(64, 64), "strength": 0.5}
    assert_same_image(_images(refiner, embeds=embeds, **image)[0],
                      _images(refiner, [PROMPT], ["blurry"], **image)[0])
    with pytest.raises(ValueError):
        encode_prompts_refiner(pipe, [PROMPT], None)


def test_lora_in_the_text_encoders_applies(models_dir, pipe):
    weighted, plain = "a red (cat:1.0) sitting on the mat, photo", PROMPT
    before = encode_prompts(pipe, [weighted], None).prompt_embeds
    pipe.load_lora_weights(str(models_dir / "loras" / "demo-style.safetensors"), adapter_name="style")
    try:
        pipe.set_adapters(["style"], adapter_weights=[1.0])
        with_lora = encode_prompts(pipe, [weighted], None).prompt_embeds
        expected = pipe.encode_prompt([plain], device=pipe.device, do_classifier_free_guidance=False)[0]
    finally:
        pipe.unload_lora_weights()
    torch.testing.assert_close(with_lora, expected)
    assert not torch.allclose(with_lora, before)
