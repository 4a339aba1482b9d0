"""Cached attention-processor signatures: same answers from ``inspect``, computed once."""

from __future__ import annotations

import inspect

from diffusers.models import attention_processor

from pixelmill.engine.device import cache_attention_signatures


def _processor_calls() -> dict[str, object]:
    return {name: value.__call__ for name, value in vars(attention_processor).items()
            if isinstance(value, type) and inspect.isfunction(getattr(value, "__call__", None))}


def test_signatures_are_unchanged_and_stored_once():
    calls = _processor_calls()
    assert "AttnProcessor2_0" in calls and "FusedAttnProcessor2_0" in calls
    before = {name: str(inspect.signature(call)) for name, call in calls.items()}
    cache_attention_signatures()
    cache_attention_signatures()  # idempotent
    after = {name: str(inspect.signature(call)) for name, call in calls.items()}
    assert after == before
    for call in calls.values():
        assert isinstance(call.__dict__.get("__signature__"), inspect.Signature)


def test_bound_processor_signature_still_drops_self():
    cache_attention_signatures()
    parameters = list(inspect.signature(attention_processor.AttnProcessor2_0().__call__).parameters)
    assert parameters[:2] == ["attn", "hidden_states"]
