"""Keyed spatial augmentation: images and masks move together, masks keep their values, draws replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from osteoscope.data.augment import PLANES, Affine, Flip, SpatialAugmentation, apply_transforms
from osteoscope.errors import ConfigError

STRONG = SpatialAugmentation(flip_axes=(0, 1), flip_p=0.5, rotate_deg=40.0, scale=0.2, translate=0.15)
STRONG_3D = SpatialAugmentation(flip_axes=(0, 1, 2), flip_p=0.5, rotate_deg=40.0, scale=0.2, translate=0.15)


def blob_sample(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> dict[str, np.ndarray]:
    """An image with a bright ball on a dim gradient, and the ball's mask."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    mask = (distance <= radius).astype(np.float32)
    image = (0.05 * grids[-1] / shape[-1] + mask).astype(np.float32)
    return {"image": image, "mask": mask}


def centroid(weights: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in weights.shape], indexing="ij")
    return np.array([(g * weights).sum() / weights.sum() for g in grids])


def rotated(degrees: float, ndim: int = 2, plane: int = 0) -> Affine:
    angles = [0.0] * len(PLANES[ndim])
    angles[plane] = degrees
    return Affine(tuple(angles), (1.0,) * ndim, (0.0,) * ndim)


@pytest.mark.parametrize(
    ("shape", "centre", "augmentation"),
    [((48, 64), (16.0, 40.0), STRONG), ((32, 36, 40), (11.0, 20.0, 25.0), STRONG_3D)],
)
def test_image_and_mask_stay_aligned(shape, centre, augmentation):
    sample = blob_sample(shape, centre, radius=5.0)
    moved_somewhere = 0
    for seed in range(6):
        transforms = augmentation.draw(np.random.default_rng(seed), len(shape))
        out = apply_transforms(sample, transforms, masks={"mask"})
        assert out["mask"].sum() > 0, "the blob left the field of view; choose a smaller shift"
        bright = np.clip(out["image"] - 0.5, 0, None)  # only the blob is above 0.5
        assert np.linalg.norm(centroid(bright) - centroid(out["mask"])) < 1.0
        moved_somewhere += np.linalg.norm(centroid(out["mask"]) - np.asarray(centre)) > 2
    assert moved_somewhere >= 4  # the draws really moved the blob, so alignment was tested


@pytest.mark.parametrize("ndim", [2, 3])
def test_masks_keep_their_values(ndim):
    rng = np.random.default_rng(0)
    shape = (40, 44) if ndim == 2 else (20, 24, 28)
    labels = rng.integers(0, 4, size=shape).astype(np.float32)  # labels 0..3, no fractions may appear
    binary = (labels > 1).astype(np.uint8)
    augmentation = STRONG if ndim == 2 else STRONG_3D
    for seed in range(4):
        transforms = augmentation.draw(np.random.default_rng(seed), ndim)
        assert any(isinstance(t, Affine) for t in transforms)
        out = apply_transforms({"labels": labels, "binary": binary}, transforms, masks=("labels", "binary"))
        assert set(np.unique(out["labels"])) <= {0.0, 1.0, 2.0, 3.0}
        assert set(np.unique(out["binary"])) == {0, 1}
        assert out["binary"].dtype == np.uint8 and out["labels"].dtype == np.float32


def test_same_seed_replays_and_other_seed_differs():
    sample = blob_sample((40, 40, 40), (15.0, 20.0, 24.0), radius=6.0)

    def run(seed: int) -> dict[str, np.ndarray]:
        return apply_transforms(sample, STRONG_3D.draw(np.random.default_rng(seed), 3), masks={"mask"})

    first, again, other = run(7), run(7), run(8)
    for key in sample:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], other["image"])
    assert STRONG_3D.draw(np.random.default_rng(7), 3) == STRONG_3D.draw(np.random.default_rng(7), 3)


def test_disabled_augmentation_is_the_identity_and_draws_nothing():
    sample = blob_sample((20, 24), (8.0, 12.0), radius=4.0)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    for augmentation in (SpatialAugmentation(), SpatialAugmentation(rotate_deg=30.0, p=0.0)):
        assert augmentation.draw(rng, 2) == []
    assert rng.bit_generator.state == state  # later draws (intensity) are not shifted by a disabled part
    out = apply_transforms(sample, [], masks={"mask"})
    assert all(out[k] is sample[k] for k in sample)
    identity = Affine((0.0,), (1.0, 1.0), (0.0, 0.0))
    np.testing.assert_array_equal(identity(sample["image"]), sample["image"])


@pytest.mark.parametrize(
    ("shape", "ndim", "axes"), [((5, 6), 2, (1,)), ((3, 5, 6), 2, (0, 1)), ((2, 4, 5, 6), 3, (0, 2))]
)
def test_flip_is_exact(shape, ndim, axes):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    offset = len(shape) - ndim  # a leading channel axis is not flipped
    expected = np.flip(array, axis=tuple(a + offset for a in axes))
    np.testing.assert_array_equal(Flip(axes, ndim)(array), expected)
    np.testing.assert_array_equal(Flip(axes, ndim)(array, nearest=True), expected)


def test_rotation_by_90_degrees_is_rot90():
    """+90 degrees turns from axis 0 towards axis 1, as np.rot90: counter-clockwise as displayed."""
    array = np.random.default_rng(0).random((17, 17)).astype(np.float32)
    np.testing.assert_allclose(rotated(90.0)(array), np.rot90(array), atol=1e-5)
    np.testing.assert_array_equal(rotated(-90.0)(array, nearest=True), np.rot90(array, -1))
    volume = np.random.default_rng(1).random((9, 9, 9)).astype(np.float32)
    for index, plane in enumerate(PLANES[3]):
        np.testing.assert_allclose(rotated(90.0, 3, index)(volume), np.rot90(volume, 1, axes=plane), atol=1e-5)


def test_rotation_of_a_non_square_image_is_a_true_rotation():
    """Rotation acts on voxels, not on the [-1, 1] box: a point 10 px from the centre stays 10 px away."""
    image = np.zeros((41, 81), np.float32)
    image[20, 50] = 1.0  # 10 px right of the centre (20, 40)
    out = rotated(90.0)(image)
    assert np.allclose(centroid(out), (10.0, 40.0), atol=1e-3)  # now 10 px above it (counter-clockwise)
    out = rotated(30.0)(image)
    expected = (20 - 10 * np.sin(np.deg2rad(30)), 40 + 10 * np.cos(np.deg2rad(30)))
    assert np.allclose(centroid(out), expected, atol=0.15)


def test_scale_and_translation_directions():
    image = np.zeros((40, 40), np.float32)
    image[14:26, 14:26] = 1.0  # 12 px square about the centre
    grown = Affine((0.0,), (1.5, 1.5), (0.0, 0.0))(image, nearest=True)
    assert grown.sum() == 18 * 18
    moved = Affine((0.0,), (1.0, 1.0), (0.25, -0.1))(image, nearest=True)
    np.testing.assert_allclose(centroid(moved) - centroid(image), (10.0, -4.0), atol=1e-9)


def test_outside_the_field_of_view_images_take_the_border_and_masks_zero():
    image = np.tile(np.linspace(1.0, 2.0, 16, dtype=np.float32), (16, 1))
    shift = Affine((0.0,), (1.0, 1.0), (0.0, 0.5))
    out = shift(image)
    np.testing.assert_allclose(out[:, :8], 1.0)  # the left border value was repeated
    assert shift(np.ones_like(image), nearest=True)[:, :8].sum() == 0


def test_channels_move_with_the_same_parameters():
    rng = np.random.default_rng(0)
    channels = rng.random((3, 24, 28)).astype(np.float32)
    for seed in range(3):
        transforms = STRONG.draw(np.random.default_rng(seed), 2)
        stacked = apply_transforms({"image": channels}, transforms)["image"]
        assert stacked.shape == channels.shape and stacked.dtype == np.float32
        for c in range(3):
            alone = apply_transforms({"image": channels[c]}, transforms)["image"]
            np.testing.assert_allclose(stacked[c], alone, atol=1e-6)


def test_grid_equals_affine_grid():
    affine = Affine((10.0, 20.0, -30.0), (1.1, 0.9, 1.0), (0.1, -0.2, 0.05))
    shape = (7, 10, 13)
    expected = F.affine_grid(affine.theta(shape), [1, 1, *shape], align_corners=False)
    torch.testing.assert_close(affine.grid(shape), expected, atol=1e-6, rtol=0)


def test_draw_uses_only_the_configured_planes_and_ranges():
    axial = SpatialAugmentation(rotate_deg=20.0, rotate_planes=((1, 2),))
    for seed in range(5):
        (affine,) = axial.draw(np.random.default_rng(seed), 3)
        assert affine.angles[0] == affine.angles[1] == 0.0 and 0 < abs(affine.angles[2]) <= 20.0
    (affine,) = SpatialAugmentation(scale=0.1, isotropic_scale=False).draw(np.random.default_rng(0), 3)
    assert len(set(affine.scale)) == 3 and all(0.9 <= s <= 1.1 for s in affine.scale)


@pytest.mark.parametrize(
    "options",
    [
        {"rotate_deg": -5.0},
        {"flip_axes": (3,)},
        {"flip_axes": (1, 1)},
        {"flip_p": 1.5},
        {"p": -0.1},
        {"scale": 1.0},
        {"translate": -0.1},
        {"rotate_planes": ((1, 0),)},
    ],
)
def test_bad_settings_are_config_errors(options):
    with pytest.raises(ConfigError):
        SpatialAugmentation(**options)


def test_settings_that_do_not_fit_the_data_are_refused():
    with pytest.raises(ConfigError, match="flip_axes"):
        SpatialAugmentation(flip_axes=(2,)).draw(np.random.default_rng(0), 2)
    with pytest.raises(ConfigError, match="rotate_planes"):
        SpatialAugmentation(rotate_deg=5.0, rotate_planes=((1, 2),)).draw(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="4"):
        SpatialAugmentation().draw(np.random.default_rng(0), 4)
    with pytest.raises(ValueError):
        rotated(10.0)(np.zeros((2, 3, 4, 5), np.float32))  # a 2-D transform on a 4-D array


def test_crop_samples_its_box_stretched_to_the_full_shape():
    """The crop twin samples the box of ``side`` around the centre offset ``-translation * side`` over the
    whole output, as cropping and resizing would (exact on a linear ramp, which trilinear sampling keeps)."""
    n = 32
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij")
    ramp = (grids[0] + 2 * grids[1] + 3 * grids[2]).astype(np.float32)
    crop = SpatialAugmentation(crop=0.625, crop_random_size=False, crop_p=1.0).draw_crop(np.random.default_rng(3), 3)
    side = 1 / np.asarray(crop.scale)
    assert np.allclose(side, 0.625)
    start = (0.5 - side / 2 - np.asarray(crop.translation) * side) * n  # box start in voxels
    positions = [start[a] + (np.arange(n) + 0.5) * side[a] - 0.5 for a in range(3)]  # align_corners=False
    expected = positions[0][:, None, None] + 2 * positions[1][None, :, None] + 3 * positions[2][None, None, :]
    inner = (slice(2, -2),) * 3  # the outermost samples may fall half a voxel outside and take the border
    assert np.allclose(crop(ramp)[inner], expected[inner], atol=1e-3)


def test_crop_and_affine_are_alternatives_and_flip_single_flips_one_axis():
    """SRANet's loader: OneOf(crop, affine) half and half, then one random axis flipped with p 0.3."""
    options = SpatialAugmentation(
        flip_axes=(0, 1, 2), flip_p=0.3, flip_single=True, rotate_deg=45.0, rotate_planes=((0, 2),), crop=0.625
    )
    kinds, flips = [], []
    for seed in range(400):
        transforms = options.draw(np.random.default_rng(seed), 3)
        flip = [t for t in transforms if isinstance(t, Flip)]
        (affine,) = [t for t in transforms if isinstance(t, Affine)]
        flips.append(len(flip[0].axes) if flip else 0)
        is_crop = not any(affine.angles)
        if is_crop:  # a zoom-in only: every side in [0.625, 1]
            assert all(1.0 <= s <= 1.6 + 1e-6 for s in affine.scale)
        else:
            assert affine.angles[0] == affine.angles[2] == 0.0 and abs(affine.angles[1]) <= 45.0
        kinds.append(is_crop)
    assert 0.42 < np.mean(kinds) < 0.58
    assert set(flips) == {0, 1}
    assert 0.24 < np.mean(flips) < 0.36
