"""The demo models' CLIP tokenizer, written locally: no vocabulary is downloaded.

A byte-level BPE vocabulary in CLIP's layout (bytes, bytes + ``</w>``, a handful of merges,
the special tokens), so the real ``CLIPTokenizer`` loading path runs on files this code wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

# A handful of merges so the BPE path is exercised; the rest of a word falls back to bytes.
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"),
           ("in", "g</w>"), ("o", "n</w>"), ("e", "r</w>"), ("a", "t</w>"), ("o", "f</w>")]


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/CLIP scheme)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # unprintable bytes are shifted past 255, in byte order
            chars[b] = chr(256 + extra)
            extra += 1
    # CLIP orders the vocabulary printable-first; keep that so "!" is id 0 as in SDXL.
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def vocab() -> dict[str, int]:
    """CLIP-style vocabulary: bytes, bytes + ``</w>``, merge results, then the specials."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer(pad_token: str):
    """A ``CLIPTokenizer`` over the locally written demo vocabulary (77 tokens max)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=vocab(), merges=list(_MERGES),
                         pad_token=pad_token, model_max_length=77)


def write_tokenizer_files(folder: Path, pad_token: str) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` by hand.

    Written directly (not via ``save_pretrained``) so the bytes depend only on this code.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab(), ensure_ascii=False), "utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, "utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")


# --- T5 (FLUX.1, SD3.5) ---------------------------------------------------------------------

_T5_WORDS = ("the", "a", "of", "and", "in", "on", "with", "cat", "dog", "photo", "red", "blue",
             "green", "sky", "tree", "house", "portrait", "city", "night", "light")


def t5_vocab() -> list[tuple[str, float]]:
    """A small SentencePiece-unigram vocabulary in T5's layout (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2), with single characters so any ASCII text tokenizes."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"]
    pieces += [("\u2581" + w, -1.0) for w in _T5_WORDS]
    return pieces


def build_t5_tokenizer(max_length: int = 512):
    """A ``T5Tokenizer`` (tokenizers-backed) over :func:`t5_vocab`: no download, no sentencepiece file."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocab(), extra_ids=0, model_max_length=max_length)


def write_t5_tokenizer(folder: Path, max_length: int = 512) -> None:
    """Save the demo T5 tokenizer (``tokenizer.json`` + config) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    build_t5_tokenizer(max_length).save_pretrained(folder)
