"""The 3-D baselines of SRANet's Table II: shapes, size checks, and that each learns an easy volume task."""

from __future__ import annotations

import pytest
import torch

from osteoscope.errors import ConfigError
from osteoscope.models import create_model


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16^3 noise volumes; the positives hold a bright 4^3 cube near the centre, as a lesion sits in a
    femoral-head crop (a Mixer, with no translation invariance, needs many cases to learn a cube anywhere)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, 16, generator=gen) * 0.5
    y = (torch.arange(n) % 2).float()
    for i in range(n):
        if y[i]:
            z0, y0, x0 = torch.randint(4, 9, (3,), generator=gen).tolist()
            x[i, 0, z0 : z0 + 4, y0 : y0 + 4, x0 : x0 + 4] += 2.0
    return x, y


@pytest.mark.parametrize("name", ["vgg3d", "mixer3d"])
def test_baseline_learns_a_bright_cube(name: str) -> None:
    torch.manual_seed(0)
    size = {"patch_size": 4} if name == "mixer3d" else {}  # 64 tokens of 4^3 at 16^3
    model = create_model(name, preset="tiny", in_chans=1, num_classes=1, img_size=16, **size)
    x, y = _blobs(256, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(image=x)["logits"][:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x_test, y_test = _blobs(256, 1)
    with torch.no_grad():
        p = model(image=x_test)["logits"][:, 0]
    accuracy = float(((p > 0).float() == y_test).float().mean())
    assert accuracy >= 0.75, accuracy  # chance is 0.5


def test_baseline_output_shapes_and_classes() -> None:
    x = torch.zeros(2, 2, 32, 32, 32)
    for name in ("vgg3d", "mixer3d"):
        out = create_model(name, preset="tiny", in_chans=2, num_classes=5, img_size=(32, 32, 32))(image=x)
        assert out["logits"].shape == (2, 5)


def test_baseline_size_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        create_model("mixer3d", preset="tiny", img_size=(30, 32, 32))
    with pytest.raises(ConfigError, match="3-D model"):
        create_model("vgg3d", img_size=(32, 32))
    with pytest.raises(ConfigError, match="too small"):
        create_model("vgg3d", img_size=(8, 8, 8))
    with pytest.raises(ConfigError, match="one entry per stage"):
        create_model("vgg3d", widths=(4, 8), convs=(1,))
