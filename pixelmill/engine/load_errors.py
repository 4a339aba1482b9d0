"""What a failed model load means, in words: the log line of the demo fallback and the
sentence ``serve`` prints when a model named with ``--model`` cannot load.

Plain strings from the loader's error message; no torch, so the CLI can use it without
having loaded the engine.
"""

from __future__ import annotations

import re

# What a failed default-model load usually means, recognised in the loader's message.
_FALLBACK_CAUSES = (
    (("not fully cached", "localentrynotfound", "outgoing traffic has been disabled", "couldn't connect",
      "connection", "offline"),
     "is not in the Hugging Face cache and could not be downloaded (offline, or HF_HUB_OFFLINE is set)"),
    (("gated", "401", "403", "unauthorized", "restricted"),
     "could not be downloaded: the Hub refused it (log in with `hf auth login` for a gated model)"),
    (("out of memory", "outofmemory"), "does not fit in this device's memory"),
)
_STACK_TRACE = re.compile(r"[^.(]*\b(stack ?trace|traceback)\b[^.)]*\.?", re.IGNORECASE)


def fallback_message(model: str, reason: str) -> str:
    """The two log lines a server prints when it falls back to the demo model.

    ``reason`` is the loader's error, which can end in "check out the root cause in the
    stacktrace above" (huggingface_hub's wording) although no stack trace is logged: say
    what happened in words instead, and keep the raw error only when it is not recognised.
    """
    cause = load_failure_cause(reason)
    return (f"No --model set and {model} {cause}: serving the random-weight DEMO model, images will be noise.\n"
            "Set --model / PIXELMILL_MODEL to a checkpoint (a name in --models-dir, a path or a hub id) "
            "to serve real images.")


def load_failure_cause(reason: str) -> str:
    """A model's load error (the loader's message) as the rest of a sentence about the model.

    Also what ``serve`` says when a model named with ``--model`` fails to load.
    """
    lowered = reason.lower()
    cause = next((text for needles, text in _FALLBACK_CAUSES if any(n in lowered for n in needles)), None)
    if cause is None:
        detail = " ".join(_STACK_TRACE.sub("", reason).split())
        cause = f"could not be loaded ({detail[:200].rstrip(' .;:')})"
    return cause
