"""Live previews in the engine: the latent→RGB projection and the step hook (no model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.engine.generation import _step_callback
from pixelmill.engine.preview import PreviewHook, grid, latents_to_rgb, preview_hook


def latent(*channels: float, h: int = 2, w: int = 2, batch: int = 1) -> torch.Tensor:
    """A uniform latent: channel c is ``channels[c]`` everywhere."""
    return torch.tensor(channels, dtype=torch.float32).view(1, 4, 1, 1).expand(batch, 4, h, w).contiguous()


# Expected colours worked out by hand from the SDXL factors: rgb = latent·W + bias, then
# (rgb + 1) · 127.5 rounded and clamped.
@pytest.mark.parametrize(("channels", "expected"), [
    ((0, 0, 0, 0), (141, 125, 127)),     # the bias alone: a neutral grey
    ((1, 0, 0, 0), (188, 179, 183)),     # channel 0 is brightness: a light grey
    ((0, -2, 0, 0), (206, 126, 100)),    # channel 1 negative: red/orange
    ((0, 2, 0, 0), (77, 124, 155)),      # channel 1 positive: blue
    ((0, 0, 0, -2), (222, 189, 183)),    # channel 3 negative: brighter
    ((10, 0, 0, 0), (255, 255, 255)),    # clamped at white
    ((-10, 0, 0, 0), (0, 0, 0)),         # and at black
])
def test_projection_gives_the_expected_colours(channels, expected):
    rgb = latents_to_rgb(latent(*channels))
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 2, 2, 3)
    assert rgb[0, 0, 0].tolist() == list(expected)
    assert (rgb == rgb[0, 0, 0]).all()  # a uniform latent gives a uniform image


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_latents_are_projected_in_float32(dtype):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = latents_to_rgb(x.to(dtype).to(torch.float32)).int()
    assert (latents_to_rgb(x.to(dtype)).int() - reference).abs().max() <= 1


def test_large_latents_are_averaged_down_to_the_cap():
    x = torch.zeros(1, 4, 300, 150)
    x[:, 0, :, :75] = 1.0  # left half bright
    rgb = latents_to_rgb(x, max_side=100)
    assert rgb.shape == (1, 100, 50, 3)
    assert rgb[0, :, 0].tolist() == [[188, 179, 183]] * 100 and rgb[0, 0, -1].tolist() == [141, 125, 127]


def test_other_latent_shapes_are_refused():
    with pytest.raises(ValueError, match="SDXL latents"):
        latents_to_rgb(torch.zeros(1, 16, 8, 8))


def test_grid_tiles_images_left_to_right_top_to_bottom():
    tiles = np.stack([np.full((2, 3, 3), value, dtype=np.uint8) for value in (10, 20, 30)])
    out = grid(tiles)
    assert out.shape == (4, 6, 3)  # 2 columns, 2 rows
    assert out[0, 0, 0] == 10 and out[0, 3, 0] == 20 and out[2, 0, 0] == 30 and out[2, 3, 0] == 0


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


def test_hook_sends_each_request_its_own_grid_every_few_steps():
    seen, clock = [], Clock()
    hook = PreviewHook(2, counts=[1, 3], indices=[4, 7], sink=lambda *a: seen.append(a), clock=clock)
    # request 4: one red image; request 7: three bright images
    x = torch.cat([latent(0, -2, 0, 0, h=8, w=8), latent(1, 0, 0, 0, h=8, w=8, batch=3)])
    for step in range(1, 7):
        clock.now += 1.0
        hook(step, 6, x)
    assert [(step, total) for step, total, _ in seen] == [(2, 6), (4, 6)]  # never on the last step
    previews = seen[0][2]
    assert sorted(previews) == [4, 7]
    red, bright = decode(previews[4]), decode(previews[7])
    assert red.shape == (8, 8, 3) and bright.shape == (16, 16, 3)  # 3 images: a 2×2 grid
    assert np.abs(red[4, 4].astype(int) - (206, 126, 100)).max() <= 6  # JPEG is lossy
    assert np.abs(bright[4, 4].astype(int) - (188, 179, 183)).max() <= 6
    assert bright[12, 12].max() <= 6  # the empty fourth cell stays black


def test_hook_spaces_previews_in_time():
    seen, clock = [], Clock()
    hook = PreviewHook(1, counts=[1], indices=[0], sink=lambda *a: seen.append(a[0]), min_gap_s=0.5,
                       clock=clock)
    for step, now in [(1, 0.0), (2, 0.2), (3, 0.6), (4, 0.7), (5, 1.2)]:
        clock.now = now
        hook(step, 10, latent(0, 0, 0, 0))
    assert seen == [1, 3, 5]


def test_a_failing_preview_never_fails_the_generation(caplog):
    seen = []
    hook = PreviewHook(1, counts=[2], indices=[0], sink=lambda *a: seen.append(a), min_gap_s=0)
    hook(1, 5, latent(0, 0, 0, 0))  # one latent for a request of two images
    hook(2, 5, latent(0, 0, 0, 0, batch=2))  # and it stays off for this call
    assert seen == [] and "preview failed" in caplog.text


def test_previews_off_means_no_hook_and_no_latents_touched():
    assert preview_hook(0, [1], [0], sink=lambda *a: None) is None
    assert preview_hook(3, [1], [0], sink=None) is None

    class Untouchable(dict):
        def get(self, key, default=None):
            raise AssertionError("the step callback read the latents with previews off")

    class Pipe:
        num_timesteps = 4

    progress = []
    callback = _step_callback(lambda step, total: progress.append(step), None, preview=None)
    assert callback(Pipe(), 0, None, Untouchable()) is not None and progress == [1]
