"""Compile buckets: parsing, the bucket a batch runs in, padding, warm-up, recompile logs.

No inductor compile runs here (minutes on CPU): the decisions are tested directly, the
warm-up on the uncompiled demo model, and the recompile log with dynamo's eager backend.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from pixelmill.core.errors import ModelUnavailable
from pixelmill.core.types import GenerationRequest
from pixelmill.engine import compile as buckets_module
from pixelmill.engine.compile import (RECOMPILES, choose_bucket, configure_cuda_backends, default_buckets,
                                      log_recompiles, padding_for, parse_buckets, warm_up)


def test_parse_buckets_sorts_and_deduplicates():
    assert parse_buckets(["4x1024x1024", "1x1024X1024", " 1 x 832 x 1216 ", "4x1024x1024"]) == (
        (1, 832, 1216), (1, 1024, 1024), (4, 1024, 1024))
    assert parse_buckets([]) == ()


@pytest.mark.parametrize("entry", ["1024x1024", "0x64x64", "1x100x64", "ax64x64", "1x64x64x2"])
def test_malformed_buckets_are_refused_naming_the_setting(entry):
    with pytest.raises(ModelUnavailable, match="compile_buckets"):
        parse_buckets([entry])


def test_a_batch_runs_in_the_smallest_bucket_that_holds_it():
    buckets = parse_buckets(["1x1024x1024", "2x1024x1024", "4x1024x1024", "1x832x1216"])
    assert choose_bucket(buckets, 1, 1024, 1024) == (1, 1024, 1024)
    assert choose_bucket(buckets, 3, 1024, 1024) == (4, 1024, 1024)
    assert padding_for(buckets, 3, 1024, 1024) == 1
    assert padding_for(buckets, 2, 1024, 1024) == 0
    assert choose_bucket(buckets, 5, 1024, 1024) is None  # larger than every bucket: compiles
    assert padding_for(buckets, 5, 1024, 1024) == 0
    assert choose_bucket(buckets, 1, 1216, 832) is None  # sizes match exactly (no pixel padding)
    assert default_buckets((), (1024, 1024)) == ((1, 1024, 1024),)
    assert default_buckets(buckets, (1024, 1024)) == buckets


def test_the_engine_pads_a_compiled_batch_to_its_bucket(tmp_path):
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import Settings

    def engine(**settings) -> Engine:
        return Engine(Settings(data_dir=tmp_path, models_dir=tmp_path, **settings), ModelRegistry(tmp_path))

    pipes = SimpleNamespace(native_size=(64, 64))
    requests = [GenerationRequest(prompt="a", width=64, height=64, n=1, seed=1),
                GenerationRequest(prompt="b", width=64, height=64, n=2, seed=2)]
    compiled = engine(compile=True, compile_buckets=["4x64x64", "8x64x64"])
    assert compiled.device.compile_buckets == ((4, 64, 64), (8, 64, 64))
    padded = compiled._pad_to_bucket(requests, pipes)
    assert padded[:2] == requests and len(padded) == 3 and padded[2].n == 1
    assert padded[2].prompt == "a" and padded[2].width == 64  # same batch key as the head
    assert compiled._pad_to_bucket(requests + [requests[0]], pipes) == requests + [requests[0]]
    assert engine(compile=False, compile_buckets=["4x64x64"])._pad_to_bucket(requests, pipes) == requests
    # No buckets configured: the native size at batch 1 is warmed; larger batches run as they are.
    assert engine(compile=True)._pad_to_bucket(requests, pipes) == requests
    with pytest.raises(ModelUnavailable):
        engine(compile_buckets=["big"])


def test_recompiles_are_logged_with_their_cause(caplog):
    log_recompiles()
    log_recompiles()  # idempotent: one handler

    @torch.compile(backend="eager", dynamic=False)
    def double(x):
        return x * 2

    before = len(RECOMPILES)
    with caplog.at_level(logging.WARNING, logger="pixelmill.engine.compile"):
        double(torch.ones(2, 3))
        double(torch.ones(5, 3))
    assert len(RECOMPILES) == before + 1
    assert "size mismatch" in RECOMPILES[-1]
    assert caplog.text.count("recompiled") == 1 and "size mismatch" in caplog.text


def test_warm_up_runs_every_bucket_through_the_engines_decode(pipes):
    decoded = []

    def decode(pipe, latents):
        decoded.append(tuple(latents.shape))
        return latents

    took = warm_up(pipes.base, ((1, 64, 64), (2, 64, 64)), decode=decode)
    assert len(took) == 2 and all(t > 0 for t in took)
    assert decoded == [(1, 4, 8, 8), (2, 4, 8, 8)]


def test_cuda_backend_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        configure_cuda_backends()
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def test_inductor_flags_of_the_performance_guide():
    import torch._inductor.config as inductor

    names = ("conv_1x1_as_mm", "coordinate_descent_tuning", "epilogue_fusion",
             "coordinate_descent_check_all_directions")
    saved = {name: getattr(inductor, name) for name in names}
    try:
        buckets_module.configure_inductor()
        assert inductor.conv_1x1_as_mm and inductor.coordinate_descent_tuning
        assert not inductor.epilogue_fusion and inductor.coordinate_descent_check_all_directions
    finally:
        for name, value in saved.items():
            setattr(inductor, name, value)
