"""Prompt embeddings for SDXL pipelines: A1111 weighting, ``BREAK`` and long prompts, via compel.

A plain prompt of at most 77 tokens keeps going to the pipeline as a string
(:func:`encode_prompts` returns None). Any other batch is encoded here, with the
pipeline's own tokenizers and text encoders (so LoRA adapters loaded into them apply),
into the embeddings ``StableDiffusionXL*Pipeline.__call__`` accepts instead of text:

- SDXL semantics: penultimate hidden states of both encoders, concatenated; the pooled
  embedding from ``text_encoder_2``. ``clip_skip`` picks an earlier layer for the
  prompt (not the negative prompt), exactly as diffusers does for text.
- Weights: :func:`pixelmill.core.prompt_syntax.parse_emphasis` segments go to compel as
  already-parsed fragments. compel's own prompt grammar is skipped on purpose: it would
  read ``word+``, ``.and()`` or ``withLora(...)`` in user text as operators. Weighting
  follows compel (a weight above 1 scales the distance from the empty prompt; below 1
  blends towards the prompt without that text), so numbers match A1111 in spirit, not bit
  for bit. The pooled embedding is the prompt text without syntax and without weights.
- Long prompts: 77-token chunks (split after the last ``,`` ``.`` ``;`` ``:`` that fits,
  else after the last whole word), each encoded on its own and concatenated; ``BREAK``
  starts a new chunk. Every row of a batch, negative rows too, is padded to the longest
  with empty-prompt chunks (see :func:`chunk_count`).
- No negative prompt (None, or an empty/blank one) gives zero embeddings when the model
  says ``force_zeros_for_empty_prompt``, as the pipeline would; otherwise "" is encoded.
- Bounded: :func:`~pixelmill.core.prompt_syntax.parse_emphasis` refuses nesting and
  weights it cannot honour (see its module), and embeddings that still come out
  non-finite are refused here, so NaN never reaches the UNet.

compel objects are built per call: they cache the empty-prompt encoding, which changes
whenever LoRA adapters or weights change, and building one costs one text-encoder pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.prompt_syntax import Segment, is_plain, parse_emphasis, segments_text


@dataclass
class PromptEmbeds:
    """Text conditioning for a whole batch: one row per sample, in order, on the pipeline's device."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for an SDXL pipeline call, replacing ``prompt``/``negative_prompt``."""
        return {
            "prompt_embeds": self.prompt_embeds,
            "pooled_prompt_embeds": self.pooled_prompt_embeds,
            "negative_prompt_embeds": self.negative_prompt_embeds,
            "negative_pooled_prompt_embeds": self.negative_pooled_prompt_embeds,
        }


def token_count(prompt: str, tokenizer: Any) -> int:
    """Tokens ``tokenizer`` makes of ``prompt``, start and end markers included, untruncated."""
    # verbose=False: counting a long prompt is not an attempt to feed it to the model.
    return len(tokenizer(prompt, truncation=False, verbose=False)["input_ids"])


def needs_compel(prompt: str, tokenizer: Any) -> bool:
    """Whether ``prompt`` has A1111 syntax or is longer than the tokenizer's 77-token window."""
    return not is_plain(prompt) or token_count(prompt, tokenizer) > tokenizer.model_max_length


def chunk_count(pipe: Any, prompt: str) -> int:
    """How many 77-token chunks ``prompt`` is encoded as (1 for a plain prompt that fits).

    Rows of one batch are padded to the longest with empty-prompt chunks, and a padded
    row is a (slightly) different conditioning: to keep "same image alone or batched",
    batch only samples whose ``max(chunk_count(prompt), chunk_count(negative))`` agree.
    Tokenizes only; runs no text encoder.
    """
    tokenizer, encoder = _pairs(pipe)[0]
    if not needs_compel(prompt, tokenizer):
        return 1
    provider = _compel(tokenizer, encoder, torch.device("cpu")).conditioning_provider
    total = 0
    for chunk in parse_emphasis(prompt) or [[Segment("")]]:
        token_ids = provider.get_token_ids_and_expand_weights(
            [segment.text for segment in chunk], [segment.weight for segment in chunk], device="cpu")[0]
        total += token_ids.shape[0] // provider.max_token_count
    return total


def encode_prompts(pipe: Any, prompts: list[str], negatives: list[str] | None, *,
                   clip_skip: int | None = None, always: bool = False) -> PromptEmbeds | None:
    """Embeddings for an SDXL pipeline (base, img2img, inpaint, ControlNet) or None.

    ``prompts`` and ``negatives`` have one entry per sample; ``negatives=None`` means no
    negative prompt for any sample. Returns None when no prompt or negative prompt needs
    compel (unless ``always``), so the caller keeps passing plain strings. Raises
    ``InvalidRequest`` naming ``prompt`` or ``negative_prompt`` for emphasis that cannot
    be honoured (bad syntax, too deep, weights out of range, non-finite embeddings) and
    ``InvalidRequest(param="clip_skip")`` when the text encoders have too few layers.
    """
    if negatives is not None and len(negatives) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    pairs = _pairs(pipe)
    tokenizer = pairs[0][0]
    texts = [*prompts, *(negatives or [])]
    if not always and not any(needs_compel(text, tokenizer) for text in texts):
        return None
    return _Batch(pipe, pairs, clip_skip).encode(prompts, negatives)


def encode_prompts_refiner(pipe: Any, prompts: list[str], negatives: list[str] | None, *,
                           clip_skip: int | None = None, always: bool = False) -> PromptEmbeds | None:
    """Like :func:`encode_prompts`, for an SDXL refiner (only ``text_encoder_2``).

    The refiner cross-attends to ``text_encoder_2``'s penultimate layer alone, which is
    what ``StableDiffusionXLImg2ImgPipeline`` encodes when its ``text_encoder`` is None.
    """
    if pipe.text_encoder is not None or pipe.text_encoder_2 is None:
        raise ValueError("a refiner pipeline has text_encoder_2 and no text_encoder")
    return encode_prompts(pipe, prompts, negatives, clip_skip=clip_skip, always=always)


def _pairs(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) of each encoder the pipeline has, in SDXL's order."""
    return [(tok, enc) for tok, enc in ((pipe.tokenizer, pipe.text_encoder),
                                        (pipe.tokenizer_2, pipe.text_encoder_2)) if enc is not None]


class _ClipSkip:
    """A text encoder whose ``hidden_states`` lose their last ``skip`` layers.

    compel reads the penultimate hidden state; dropping ``skip`` layers from the end makes
    that diffusers' ``hidden_states[-(clip_skip + 2)]``. The encoder itself is called, not
    copied, so its adapters apply.
    """

    def __init__(self, encoder: Any, skip: int):
        layers = encoder.config.num_hidden_layers
        if not 0 < skip < layers:
            raise InvalidRequest(f"clip_skip must be 1 to {layers - 1} for this model "
                                 f"(its text encoders have {layers} layers), got {skip}", param="clip_skip")
        self.encoder = encoder
        self.skip = skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.encoder(*args, **kwargs)
        if kwargs.get("output_hidden_states"):
            output.hidden_states = output.hidden_states[:len(output.hidden_states) - self.skip]
        return output


def _compel(tokenizer: Any, encoder: Any, device: torch.device) -> Any:
    from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode

    return Compel(tokenizer=tokenizer, text_encoder=encoder, device=device,
                  returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                  truncate_long_prompts=False, split_long_text_mode=SplitLongTextMode.PHRASES)


class _Batch:
    """One encoding call: compel objects for the prompts and (without clip skip) the negatives."""

    def __init__(self, pipe: Any, pairs: list[tuple[Any, Any]], clip_skip: int | None):
        self.device = pipe._execution_device
        # The pipeline casts text embeddings to text_encoder_2's dtype (the UNet's if none).
        self.dtype = (pipe.text_encoder_2 if pipe.text_encoder_2 is not None else pipe.unet).dtype
        self.zeros_for_empty = bool(pipe.config.get("force_zeros_for_empty_prompt", False))
        for tokenizer, _ in pairs:
            # compel tokenizes long prompts untruncated on purpose (it chunks them); mark the
            # tokenizer's "longer than the maximum length" warning as given so logs stay clean.
            given = getattr(tokenizer, "deprecation_warnings", None)
            if given is not None:
                given["sequence-length-is-longer-than-the-specified-maximum"] = True
        self.negative = [_compel(tok, enc, self.device) for tok, enc in pairs]
        self.positive = self.negative if not clip_skip else [
            _compel(tok, _ClipSkip(enc, clip_skip), self.device) for tok, enc in pairs]

    def encode(self, prompts: list[str], negatives: list[str] | None) -> PromptEmbeds:
        with torch.no_grad():
            rows = [self._row(self.positive, prompt) for prompt in prompts]
            negative_rows = [self._negative_row(text) for text in negatives or [None] * len(prompts)]
            length = max(part.shape[1] for row in rows + negative_rows if row for part in row[0])
            embeds, pooled = self._stack(rows, self.positive, length)
            # Zero rows take the shape of the prompt rows, like the pipeline's zeros_like.
            zeros = (torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1]))
            negative_embeds, negative_pooled = self._stack(negative_rows, self.negative, length, zeros)
        _check_finite("prompt", embeds, pooled)
        _check_finite("negative_prompt", negative_embeds, negative_pooled)
        return PromptEmbeds(embeds, pooled, negative_embeds, negative_pooled)

    def _negative_row(self, text: str | None):
        if self.zeros_for_empty and (text is None or not text.strip()):
            return None  # zeros, made once the common length is known
        try:
            return self._row(self.negative, text or "")
        except InvalidRequest as exc:
            exc.param = "negative_prompt"  # parse_emphasis cannot know which field it read
            raise

    def _row(self, compels: list[Any], prompt: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-encoder conditioning (1, tokens, dim) and the pooled embedding of one prompt."""
        from compel.prompt_parser import Conjunction, FlattenedPrompt

        chunks = parse_emphasis(prompt) or [[]]
        conjunction = Conjunction([
            FlattenedPrompt([(segment.text, segment.weight) for segment in chunk] or [("", 1.0)])
            for chunk in chunks])
        parts = [compel.build_conditioning_tensor_for_conjunction(conjunction)[0] for compel in compels]
        pooled = compels[-1].conditioning_provider.get_pooled_embeddings(
            [segments_text(chunks)], device=self.device)
        return parts, pooled

    def _stack(self, rows: list, compels: list[Any], length: int,
               zeros: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = [], []
        for row in rows:
            if row is None:
                embeds.append(zeros[0])
                pooled.append(zeros[1])
                continue
            parts = [_pad(part, compel, length) for part, compel in zip(row[0], compels)]
            embeds.append(torch.cat(parts, dim=-1).to(self.device, self.dtype))
            pooled.append(row[1].to(self.device, self.dtype))
        return torch.cat(embeds), torch.cat(pooled)


def _check_finite(param: str, *tensors: torch.Tensor) -> None:
    """InvalidRequest naming ``param`` if any embedding is inf or NaN.

    Weights are bounded before encoding, so this is the last line: a half-precision
    text encoder can still overflow on large weights, and a NaN embedding would turn the
    whole image into NaN (black) instead of failing.
    """
    if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors):
        raise InvalidRequest(f"the {param}'s emphasis weights give non-finite text embeddings on this "
                             "model; use smaller weights", param=param)


def _pad(conditioning: torch.Tensor, compel: Any, length: int) -> torch.Tensor:
    """Extend ``conditioning`` to ``length`` tokens with empty-prompt chunks (compel's padding)."""
    missing = length - conditioning.shape[1]
    if missing == 0:
        return conditioning
    empty = compel.conditioning_provider.empty_z.to(conditioning.device, conditioning.dtype)
    return torch.cat([conditioning, *[empty] * (missing // empty.shape[1])], dim=1)
