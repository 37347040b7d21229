"""Every data shape the five tasks need loads from a manifest into a batch."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from osteoscope.data.datasets import (
    BilateralRois,
    CaseDataset,
    ImageWithMask,
    MultiProtocol,
    SingleImage,
    VolumeWithMask,
)
from osteoscope.data.manifest import load_manifest
from osteoscope.data.transforms import crop
from osteoscope.errors import DataError


def png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array.astype(np.uint16)).save(path)
    return path.name


def nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([1.5, 1.5, 2.0, 1.0])), path)


def batch_of(root: Path, builder, n: int = 2) -> dict[str, torch.Tensor]:
    dataset = CaseDataset(load_manifest(root).cases, builder)
    return next(iter(DataLoader(dataset, batch_size=n)))


def test_single_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f"c{i},p{i},{png(tmp_path / f'{i}.png', rng.integers(0, 4000, (40, 30)))},{i % 2}" for i in range(2)]
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\n" + "\n".join(rows))
    batch = batch_of(tmp_path, SingleImage(size=(32, 24)))
    assert batch["image"].shape == (2, 1, 32, 24)
    assert batch["label"].tolist() == [0.0, 1.0]


def test_bilateral_rois_mirror_right_head(tmp_path: Path) -> None:
    image = np.zeros((60, 100), np.uint16)
    image[20:40, 10:30] = 1000  # patient's right head (image left), bright on its lateral (image-left) half
    image[20:40, 10:15] = 3000
    image[20:40, 70:90] = 1000  # patient's left head (image right), bright on its lateral (image-right) half
    image[20:40, 85:90] = 3000
    png(tmp_path / "a.png", image)
    (tmp_path / "manifest.csv").write_text(
        "case_id,patient_id,image,label,side,box_left,box_right\nc1,p1,a.png,1,left,70 20 90 40,10 20 30 40\n"
    )
    batch = batch_of(tmp_path, BilateralRois(size=20), n=1)
    assert batch["left"].shape == batch["right"].shape == (1, 1, 20, 20)
    # after mirroring both heads face the same way: identical ROIs
    assert torch.allclose(batch["left"], batch["right"], atol=1e-5)
    assert batch["side_label"].tolist() == [[1.0, 0.0]]
    unmirrored = batch_of(tmp_path, BilateralRois(size=20, mirror_right=False), n=1)
    assert not torch.allclose(unmirrored["left"], unmirrored["right"], atol=1e-2)


def test_bilateral_augmentation_is_reproducible_and_swaps_side_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    png(tmp_path / "a.png", rng.integers(0, 4000, (60, 100)))
    (tmp_path / "manifest.csv").write_text(
        "case_id,patient_id,image,label,side,box_left,box_right\nc1,p1,a.png,1,left,70 20 90 40,10 20 30 40\n"
    )
    cases = load_manifest(tmp_path).cases
    dataset = CaseDataset(cases, BilateralRois(size=16), augment=True, seed=5)
    first = [dataset[0]["side_label"].tolist() for dataset.epoch in range(20)]
    again = [dataset[0]["side_label"].tolist() for dataset.epoch in range(20)]
    assert first == again
    assert {tuple(s) for s in first} == {(1.0, 0.0), (0.0, 1.0)}


def test_volume_with_mask_crops_the_box(tmp_path: Path) -> None:
    volume = np.zeros((20, 24, 28), np.float32)  # (z, y, x)
    volume[5:15, 6:18, 8:20] = 700
    mask = (volume > 0).astype(np.float32)
    for name, array in (("ct.nii.gz", volume), ("mask.nii.gz", mask)):
        nifti(tmp_path / name, np.transpose(array, (2, 1, 0)))  # NIfTI stores (x, y, z)
    (tmp_path / "manifest.csv").write_text(
        "case_id,patient_id,image,mask,box,label\nc1,p1,ct.nii.gz,mask.nii.gz,8 6 5 20 18 15,1\n"
    )
    batch = batch_of(tmp_path, VolumeWithMask(size=(8, 8, 8), keep_aspect=False), n=1)
    assert batch["image"].shape == batch["mask"].shape == (1, 1, 8, 8, 8)
    assert batch["mask"].min() == 1.0  # the box is exactly the bone, so the mask fills it


def test_multi_protocol_with_one_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    columns = ["image_t1", "image_t2", "image_pdfs", "image_stir", "image_t1fs"]
    header = "case_id,patient_id,label," + ",".join(columns)
    rows = []
    for i in range(2):
        names = [png(tmp_path / f"{i}_{c}.png", rng.integers(0, 3000, (32, 32))) for c in columns]
        names[3] = "" if i == 0 else names[3]
        rows.append(f"c{i},p{i},{i + 1}," + ",".join(names))
    (tmp_path / "manifest.csv").write_text(header + "\n" + "\n".join(rows))
    batch = batch_of(tmp_path, MultiProtocol(columns=tuple(columns), size=(16, 16)))
    assert batch["image"].shape == (2, 5, 1, 16, 16)
    assert batch["present"].tolist() == [[True, True, True, False, True], [True] * 5]
    assert batch["image"][0, 3].abs().sum() == 0
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [1, 2]


def test_multilabel_image_with_rough_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = [f"label_{n}" for n in ("tuberosity", "primary_line", "collapse", "body", "posterior", "tongue")]
    header = "case_id,patient_id,image,mask_rough," + ",".join(labels)
    rows = []
    for i in range(2):
        image = png(tmp_path / f"{i}.png", rng.integers(0, 3000, (40, 48)))
        mask = png(tmp_path / f"{i}_m.png", (rng.random((40, 48)) > 0.5) * 255)
        rows.append(f"c{i},p{i},{image},{mask}," + ",".join(str((i + k) % 2) for k in range(6)))
    (tmp_path / "manifest.csv").write_text(header + "\n" + "\n".join(rows))
    batch = batch_of(tmp_path, ImageWithMask(label_columns=tuple(labels), size=(32, 32)))
    assert batch["image"].shape == batch["mask"].shape == (2, 1, 32, 32)
    assert batch["label"].tolist() == [[0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]]
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


def test_unreadable_image_error_names_case(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("not an image")
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\nbroken,p1,a.png,1\n")
    dataset = CaseDataset(load_manifest(tmp_path).cases, SingleImage(size=(8, 8)))
    with pytest.raises(DataError) as info:
        dataset[0]
    assert info.value.case_id == "broken" and "a.png" in str(info.value)


def test_crop_pads_outside_and_squares() -> None:
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    region = crop(image, (-2, 0, 3, 5))
    assert region.shape == (5, 5)
    assert (region[:, :2] == region[:, 2:3]).all()  # edge padding on the left
    assert crop(image, (2, 2, 4, 8), square=True).shape == (6, 6)


def test_volume_keeps_physical_aspect_and_pads(tmp_path: Path) -> None:
    """An anisotropic scan of a ball becomes a round ball in isotropic voxels, padded to the cube."""
    z, y, x = np.mgrid[:16, :40, :40]  # 64 mm deep, 40 mm wide
    ball = (((z - 7.5) * 4.0) ** 2 + ((y - 19.5) * 1.0) ** 2 + ((x - 19.5) * 1.0) ** 2 <= 12.0**2).astype(np.float32)
    volume = 1000 * ball
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.diag([-1.0, -1.0, 4.0, 1.0])), path)
    nib.save(nib.Nifti1Image(np.transpose(ball, (2, 1, 0)), np.diag([-1.0, -1.0, 4.0, 1.0])), tmp_path / "m.nii.gz")
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,mask,label\nc1,p1,ct.nii.gz,m.nii.gz,0\n")
    batch = batch_of(tmp_path, VolumeWithMask(size=(20, 20, 20), window=None), n=1)
    mask = batch["mask"][0, 0].numpy()
    assert mask.shape == (20, 20, 20)
    extents = [np.ptp(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))) + 1 for k in range(3)]
    assert max(extents) - min(extents) <= 2  # round, not squashed 4:1 along z
    stretched = batch_of(tmp_path, VolumeWithMask(size=(20, 20, 20), window=None, keep_aspect=False), n=1)
    s = stretched["mask"][0, 0].numpy()
    s_extents = [np.ptp(np.flatnonzero(s.any(axis=tuple(a for a in range(3) if a != k)))) + 1 for k in range(3)]
    assert max(s_extents) - min(s_extents) > 2
