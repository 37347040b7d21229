"""Every data shape the five tasks need loads from a manifest into a batch."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from osteoscope.data.augment import SpatialAugmentation
from osteoscope.data.cache import DecodedCache
from osteoscope.data.datasets import (
    Augmentation,
    BilateralRois,
    CaseDataset,
    MultiProtocol,
    SingleImage,
    VolumeWithMask,
    read_case_image,
)
from osteoscope.data.manifest import Case, load_manifest
from osteoscope.data.transforms import crop
from osteoscope.errors import ConfigError, DataError


def png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array.astype(np.uint16)).save(path)
    return path.name


def nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([1.5, 1.5, 2.0, 1.0])), path)


def binary(case: Case) -> torch.Tensor:
    return torch.tensor(float(case.labels["label"]))


def batch_of(root: Path, builder, n: int = 2) -> dict[str, torch.Tensor]:
    dataset = CaseDataset(load_manifest(root).cases, builder)
    return next(iter(DataLoader(dataset, batch_size=n)))


def test_single_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f"c{i},p{i},{png(tmp_path / f'{i}.png', rng.integers(0, 4000, (40, 30)))},{i % 2}" for i in range(2)]
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\n" + "\n".join(rows))
    batch = batch_of(tmp_path, SingleImage(size=(32, 24), target=binary))
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
    batch = batch_of(tmp_path, BilateralRois(size=20, target=binary), n=1)
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
    stage = lambda case: torch.tensor(case.labels["label"])  # noqa: E731
    batch = batch_of(tmp_path, MultiProtocol(columns=tuple(columns), size=(16, 16), stack="protocols", target=stage))
    assert batch["image"].shape == (2, 5, 1, 16, 16)
    assert batch["present"].tolist() == [[True, True, True, False, True], [True] * 5]
    assert batch["image"][0, 3].abs().sum() == 0
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [1, 2]
    # as channels of one image for a plain CNN: five images, then one constant present-plane per protocol
    channels = batch_of(tmp_path, MultiProtocol(columns=tuple(columns), size=(16, 16), stack="channels"))
    assert channels["image"].shape == (2, 10, 16, 16)
    assert torch.equal(channels["image"][:, :5], batch["image"][:, :, 0])
    planes = channels["image"][:, 5:]
    assert torch.equal(planes, channels["present"].float()[:, :, None, None].expand_as(planes))


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
    target = lambda case: torch.tensor([float(case.labels[c]) for c in labels])  # noqa: E731
    batch = batch_of(tmp_path, SingleImage(mask_column="mask_rough", size=(32, 32), target=target))
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


def test_volume_is_z_scored_as_sranet_loads_it_or_robustly_normalised(tmp_path: Path) -> None:
    """``zscore`` (default) gives the whole padded volume mean 0 and SD 1; ``robust`` maps its percentiles
    to [-1, 1] instead, so the two differ."""
    rng = np.random.default_rng(0)
    volume = rng.normal(300.0, 200.0, size=(16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.diag([-1.0, -1.0, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\nc1,p1,ct.nii.gz,0\n")
    image = batch_of(tmp_path, VolumeWithMask(size=(16, 16, 16)), n=1)["image"][0, 0].numpy()
    assert abs(image.mean()) < 1e-4 and abs(image.std() - 1.0) < 1e-3
    robust = batch_of(tmp_path, VolumeWithMask(size=(16, 16, 16), normalise="robust"), n=1)["image"][0, 0].numpy()
    assert np.percentile(robust, 99.5) == pytest.approx(1.0, abs=1e-3) and abs(robust.std() - 1.0) > 0.1
    with pytest.raises(ConfigError, match="zscore or robust"):
        VolumeWithMask(normalise="minmax")


def _blob_case(tmp_path: Path) -> Path:
    """One image with an off-centre bright blob and the blob's mask."""
    yy, xx = np.mgrid[:48, :48]
    blob = ((yy - 14) ** 2 + (xx - 30) ** 2 <= 36).astype(np.float32)
    png(tmp_path / "i.png", 500 + 3000 * blob)
    png(tmp_path / "m.png", 255 * blob)
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,mask_rough,label\nc1,p1,i.png,m.png,1\n")
    return tmp_path


def test_augmentation_moves_image_and_mask_alike(tmp_path: Path) -> None:
    spatial = SpatialAugmentation(flip_axes=(0, 1), rotate_deg=40, scale=0.2, translate=0.2)
    builder = SingleImage(size=(48, 48), mask_column="mask_rough", augmentation=Augmentation(spatial=spatial))
    dataset = CaseDataset(load_manifest(_blob_case(tmp_path)).cases, builder, augment=True, seed=3)
    moved = 0
    for dataset.epoch in range(12):
        sample = dataset[0]
        image, mask = sample["image"][0].numpy(), sample["mask"][0].numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}  # nearest neighbour keeps the mask binary
        bright = image > image.mean() + image.std()
        assert bright.any() and mask.any()
        overlap = (bright & (mask > 0)).sum() / bright.sum()
        assert overlap > 0.8, overlap  # the bright blob is still where the mask says
        moved += not np.array_equal(mask, dataset.builder.decode(dataset.cases[0])["mask"])
    assert moved >= 10  # the draws really move the sample


@pytest.mark.parametrize("kind", ["single", "volume", "protocols", "bilateral"])
def test_every_builder_augments_reproducibly(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(4)
    augmentation = Augmentation(spatial=SpatialAugmentation(rotate_deg=20, translate=0.1))
    if kind == "volume":
        nifti(tmp_path / "ct.nii.gz", rng.normal(0, 100, (12, 12, 12)))
        (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\nc1,p1,ct.nii.gz,1\n")
        builder = VolumeWithMask(size=(12, 12, 12), window=None, augmentation=augmentation)
    elif kind == "bilateral":
        png(tmp_path / "a.png", rng.integers(0, 4000, (60, 100)))
        (tmp_path / "manifest.csv").write_text(
            "case_id,patient_id,image,label,box_left,box_right\nc1,p1,a.png,1,70 20 90 40,10 20 30 40\n"
        )
        builder = BilateralRois(size=16)
    else:
        png(tmp_path / "a.png", rng.integers(0, 4000, (24, 24)))
        header = "image" if kind == "single" else "image_t1"
        (tmp_path / "manifest.csv").write_text(f"case_id,patient_id,{header},label\nc1,p1,a.png,1\n")
        builder = (
            SingleImage(size=(24, 24), augmentation=augmentation)
            if kind == "single"
            else MultiProtocol(columns=("image_t1",), size=(24, 24), augmentation=augmentation)
        )
    dataset = CaseDataset(load_manifest(tmp_path).cases, builder, augment=True, seed=1)
    key = "left" if kind == "bilateral" else "image"
    first = [dataset[0][key] for dataset.epoch in range(3)]
    again = [dataset[0][key] for dataset.epoch in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # same (seed, epoch, index)
    assert not torch.equal(first[0], first[1])  # another epoch, another draw
    plain = CaseDataset(dataset.cases, builder)[0][key]
    assert not torch.equal(plain, first[0])  # evaluation sees the unaugmented sample


def test_pretext_target_moves_with_the_protocols(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:32, :32]
    png(tmp_path / "t1.png", 100 + 2000 * ((yy - 10) ** 2 + (xx - 20) ** 2 < 30))
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image_t1,image_ct\nc1,p1,t1.png,t1.png\n")
    spatial = SpatialAugmentation(rotate_deg=45, translate=0.2)
    builder = MultiProtocol(
        columns=("image_t1",),
        size=(32, 32),
        present_planes=False,
        target_column="image_ct",
        augmentation=Augmentation(spatial=spatial, intensity=0.0),
    )
    dataset = CaseDataset(load_manifest(tmp_path).cases, builder, augment=True, seed=2)
    for dataset.epoch in range(4):
        sample = dataset[0]
        assert torch.allclose(sample["image"][0], sample["label"][0], atol=1e-5)  # one draw for input and target


def test_cache_decodes_each_case_once_and_says_when_full(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = [f"c{i},p{i},{png(tmp_path / f'{i}.png', rng.integers(0, 4000, (40, 40)))},{i % 2}" for i in range(6)]
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image,label\n" + "\n".join(rows))
    cases = load_manifest(tmp_path).cases
    cache = DecodedCache(2**20)
    augmentation = Augmentation(spatial=SpatialAugmentation(rotate_deg=10))
    dataset = CaseDataset(cases, SingleImage(size=(32, 32), augmentation=augmentation, cache=cache), augment=True)
    for dataset.epoch in range(3):
        [dataset[i] for i in range(len(cases))]
    assert cache.misses == len(cases) and cache.hits == 2 * len(cases)  # later epochs never decode again
    messages: list[str] = []
    small = DecodedCache(3 * 32 * 32 * 4, on_full=messages.append)  # room for three decoded images
    dataset = CaseDataset(cases, SingleImage(size=(32, 32), cache=small))
    for _ in range(2):
        [dataset[i] for i in range(len(cases))]
    assert len(small) == 3 and small.nbytes <= small.max_bytes
    assert len(messages) == 1 and "cache full" in messages[0]


def test_ct_series_is_chosen_by_series_uid_and_cropped_by_a_box_in_mm(tmp_path: Path) -> None:
    """A DICOM folder holding two series is read by the manifest's ``series_uid`` (without it: an error listing
    both), and ``box_mm`` in patient mm crops what the same ``box`` in voxels crops."""
    import pydicom

    from osteoscope.data.readers import read_image
    from osteoscope.phantoms.avnfh_ct import generate

    manifest = load_manifest(generate(tmp_path / "ct", n=1, seed=2, fmt="dicom"))
    case = manifest.cases[0]
    folder = case.images["image"]
    for file in sorted(folder.iterdir()):  # a second series in the same folder: the same slices, brighter
        ds = pydicom.dcmread(file)
        first_uid = ds.SeriesInstanceUID
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.99.7", pydicom.uid.generate_uid()
        ds.PixelData = (ds.pixel_array + 100).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"{file.name}-bright")
    builder = VolumeWithMask(size=(16, 16, 16), mask_column=None)
    with pytest.raises(DataError, match=r"2 DICOM series.*99\.7"):
        builder(case, None)
    geometry = np.asarray(read_image(folder, series=first_uid).meta["index_to_lps"])
    x0, y0, z0, x1, y1, z1 = case.boxes["box"]
    a, b = geometry @ [z0, y0, x0, 1], geometry @ [z1 - 1, y1 - 1, x1 - 1, 1]
    in_mm = tuple(round(v) for v in (*np.minimum(a, b)[:3], *np.maximum(a, b)[:3]))

    def with_(boxes: dict, uid: str) -> Case:
        return Case(case.case_id, case.patient_id, case.images, boxes=boxes, extra={"series_uid": uid})

    by_voxels = builder(with_({"box": case.boxes["box"]}, first_uid), None)["image"]
    by_mm = builder(with_({"box_mm": in_mm}, first_uid), None)["image"]
    assert torch.corrcoef(torch.stack([by_voxels.ravel(), by_mm.ravel()]))[0, 1] > 0.95  # 1 mm rounding
    first, bright = (read_case_image(with_({}, uid), "image").array for uid in (first_uid, "1.2.826.0.1.3680043.99.7"))
    assert np.allclose(bright - first, 100.0)
