"""The web UI's infotext reader (``ui-infotext.js``) under Node: every sampler the server writes
comes back as the scheduler it ran, from A1111 >= 1.9's split form and from the older one-name form.

Node runs the module as it is served (an ES module, no build step). Without Node the module
skips, except under ``CI=true``, where it fails (as the browser tests do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pixelmill.core.samplers import SCHEDULERS, available_schedulers, canonical_scheduler
from pixelmill.core.types import GenerationRequest
from pixelmill.images.codecs import a1111_parameters, generation_infotext

MODULE = Path(__file__).resolve().parents[2] / "pixelmill" / "api" / "static" / "ui-infotext.js"

_SCRIPT = """
const { parseInfotext, infotextToParams } = await import(process.argv[1]);
const texts = JSON.parse(await new Promise((done) => {
  let data = ""; process.stdin.on("data", (c) => (data += c)); process.stdin.on("end", () => done(data));
}));
console.log(JSON.stringify(texts.map((t) => infotextToParams(parseInfotext(t)))));
"""


def read_in_node(texts: list[str]) -> list[dict]:
    """``infotextToParams(parseInfotext(text))`` of each text, as the gallery calls it."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the ui-infotext.js test must run in CI: node is not installed")
        pytest.skip("node is not installed")
    done = subprocess.run([node, "--input-type=module", "-e", _SCRIPT, MODULE.as_uri()],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_every_sampler_the_server_writes_reads_back_as_the_scheduler_that_ran():
    names = available_schedulers()  # canonical_scheduler refuses the others
    request = GenerationRequest(prompt="a lighthouse", negative_prompt="fog", steps=3, guidance=4.5)
    texts = [generation_infotext(request, model="demo", sampler=SCHEDULERS[name].label, seed=7, width=64,
                                 height=48, version="test") for name in names]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in texts[names.index("dpmpp_2m_karras")]
    for name, params in zip(names, read_in_node(texts), strict=True):
        assert canonical_scheduler(params["scheduler"]) == name, (name, params["scheduler"])
        assert (params["prompt"], params["negative_prompt"], params["steps"], params["guidance"]) == (
            "a lighthouse", "fog", 3, 4.5)
        assert (params["seed"], params["width"], params["height"], params["model"]) == (7, 64, 48, "demo")


# (Sampler, Schedule type, what ran) as A1111 writes them.
A1111_TEXTS = [
    ("DPM++ 2M Karras", None, "dpmpp_2m_karras"),    # before A1111 1.9: one name
    ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),    # A1111's Automatic for DPM++ 2M is Karras
    ("DPM++ 2M SDE", "Automatic", "dpmpp_2m_sde_exponential"),
    ("DPM++ 2M", "Uniform", "dpmpp_2m"),
    ("Euler", "Karras", "euler_karras"),
    ("Euler a", "Automatic", "euler_a"),
]


def test_a1111_infotexts_of_both_formats():
    texts = [a1111_parameters(prompt="x", negative_prompt="", steps=20, sampler=sampler, schedule=schedule,
                              cfg_scale=7, seed=1, width=512, height=512, model="sdxl")
             for sampler, schedule, _ in A1111_TEXTS]
    for (sampler, schedule, ran), params in zip(A1111_TEXTS, read_in_node(texts), strict=True):
        assert canonical_scheduler(params["scheduler"]) == ran, (sampler, schedule, params["scheduler"])
