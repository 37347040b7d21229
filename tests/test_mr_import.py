"""``osteoscope import-mr`` on real DICOM MR files (pydicom's and pydicom-data's test files, tags rewritten):
series to protocols by the YAML mapping, unassigned and duplicate series, a user's mapping first, resampling
onto the reference grid in patient coordinates, the written manifest through the task's sample builder with
one and three slices, and the command line."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from helpers import read_rows
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from osteoscope.cli import app
from osteoscope.data.datasets import MultiProtocol
from osteoscope.data.manifest import load_manifest
from osteoscope.data.readers import read_image
from osteoscope.data.transforms import resize
from osteoscope.errors import ConfigError, DataError
from osteoscope.tasks import make_task
from osteoscope.tasks.onfh_mr_staging import importer
from osteoscope.tasks.onfh_mr_staging.importer import import_studies, load_mapping, plan_study, read_axes

REPO = Path(__file__).resolve().parents[1]
DATA_STORE = Path(pydicom.__file__).parents[1] / "data_store" / "data"
STUDY_UID, FRAME_UID, PATIENT = generate_uid(), generate_uid(), "ONFH-001"
MARKER = np.array([4.0, -3.0, 2.0])  # patient LPS mm near which the STIR series gets one bright voxel


def template(name: str) -> Path:
    """A real MR file of pydicom's test data (``MR_small.dcm``) or pydicom-data's, or skip."""
    path = get_testdata_file(name) if name == "MR_small.dcm" else DATA_STORE / name
    if path is None or not Path(path).is_file():
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def field_value(points: np.ndarray) -> np.ndarray:
    """The anatomy every series samples: linear in patient mm, so linear resampling reproduces it exactly."""
    return 2000.0 + 10.0 * points[..., 0] + 5.0 * points[..., 1] + 3.0 * points[..., 2]


@dataclass(frozen=True)
class Grid:
    """The geometry of one synthetic series: orientation (row then column direction), spacing, size."""

    orientation: tuple[float, ...]
    spacing: float
    size: int
    slices: int
    gap: float
    origin: tuple[float, float, float]

    def index_to_lps(self) -> np.ndarray:
        """(slice, row, column) -> LPS mm."""
        row, col = np.asarray(self.orientation[:3], float), np.asarray(self.orientation[3:], float)
        row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
        geometry = np.eye(4)
        geometry[:3, 0] = np.cross(row, col) * self.gap
        geometry[:3, 1] = col * self.spacing
        geometry[:3, 2] = row * self.spacing
        geometry[:3, 3] = self.origin
        return geometry

    def points(self, k: int) -> np.ndarray:
        """LPS mm of every pixel of slice ``k``, (rows, columns, 3)."""
        r, c = np.mgrid[: self.size, : self.size]
        index = np.stack([np.full_like(r, k), r, c, np.ones_like(r)], axis=-1).astype(float)
        return (index @ self.index_to_lps().T)[..., :3]


def write_series(
    folder: Path,
    source: str,
    grid: Grid,
    *,
    number: int,
    description: str,
    scanning: str = "SE",
    variant: str = "NONE",
    options: str | None = "",
    marker: bool = False,
    patient: str = PATIENT,
) -> str:
    """Write one series of ``grid.slices`` files into ``folder`` from a real MR file with rewritten tags; its
    pixels sample :func:`field_value` (plus, with ``marker``, one bright voxel nearest :data:`MARKER`)."""
    base = pydicom.dcmread(template(source))
    uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    geometry = grid.index_to_lps()
    marked = np.rint(np.linalg.solve(geometry, [*MARKER, 1.0])[:3]).astype(int) if marker else None
    assert marked is None or (np.all(marked >= 0) and np.all(marked < [grid.slices, grid.size, grid.size]))
    for k in range(grid.slices):
        ds = base.copy()
        for keyword in ("RescaleSlope", "RescaleIntercept", "SpacingBetweenSlices", "WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
        values = field_value(grid.points(k))
        if marked is not None and marked[0] == k:
            values[marked[1], marked[2]] = 4000.0
        dtype = np.int16 if int(ds.PixelRepresentation) == 1 else np.uint16
        ds.Rows = ds.Columns = grid.size
        ds.BitsAllocated, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 1, "MONOCHROME2"
        ds.PixelData = np.rint(values).astype(dtype).tobytes()
        ds.Modality, ds.PatientID = "MR", patient
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = STUDY_UID, FRAME_UID, uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, description
        ds.ScanningSequence, ds.SequenceVariant = scanning.split("\\"), variant.split("\\")
        if options is not None:
            ds.ScanOptions = options.split("\\") if options else ""
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in grid.orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry[:3, :3] @ [k, 0, 0] + geometry[:3, 3]]
        ds.PixelSpacing = [grid.spacing, grid.spacing]
        ds.SliceThickness = grid.gap
        ds.save_as(folder / f"{uid[-8:]}_{k:03d}.dcm")
    return uid


T1 = Grid((1, 0, 0, 0, 1, 0), 2.0, 32, 12, 4.0, (-32.0, -32.0, -22.0))
T2 = Grid((1, 0, 0, 0, 1, 0), 1.6, 40, 15, 3.5, (-30.0, -34.0, -25.0))
ANGLE = np.deg2rad(15)
PDFS = Grid((np.cos(ANGLE), np.sin(ANGLE), 0, 0, 0, -1), 1.8, 36, 10, 4.5, (-30.0, -20.0, 30.0))
STIR = Grid((0.569486, 0.822001, 0, 0, 0, -1), 2.2, 34, 9, 5.0, (-13.6, -51.4, 36.0))  # MR2_UNCR's orientation
T1FS = Grid((0, 1, 0, 0, 0, -1), 2.0, 30, 10, 5.0, (23.0, -30.0, 30.0))  # slices toward the right (-x)
LOCALISER = Grid((1, 0, 0, 0, 1, 0), 4.0, 16, 3, 10.0, (-32.0, -32.0, -10.0))
GRIDS = {"t1": T1, "t2": T2, "pdfs": PDFS, "stir": STIR, "t1fs": T1FS}


def make_study(root: Path, *, repeat_t2: bool = False) -> dict[str, str]:
    """A hip MR study of five protocols on different grids, a localiser and a stray text file, spread over
    nested folders (t2 and the localiser share one); returns the SeriesInstanceUIDs by name."""
    uids = {
        "t1": write_series(root / "DICOM" / "S2", "MR_small.dcm", T1, number=2, description="T1 TSE AX"),
        "t2": write_series(root / "DICOM" / "S3", "MR_small.dcm", T2, number=3, description="T2 TSE AX"),
        "localiser": write_series(
            root / "DICOM" / "S3", "MR_small.dcm", LOCALISER, number=1, description="localizer", scanning="GR"
        ),
        # fat suppression from the Siemens file's own ScanOptions (SAT2\FS)
        "pdfs": write_series(
            root / "S4", "MR-SIEMENS-DICOM-WithOverlays.dcm", PDFS, number=4, description="PD TSE COR", options=None
        ),
        # STIR by sequence alone: no description, inversion recovery
        "stir": write_series(
            root / "S5", "MR2_UNCR.dcm", STIR, number=5, description="", scanning="SE\\IR", marker=True
        ),
        # fat suppression from the description alone
        "t1fs": write_series(root / "S6", "MR_small.dcm", T1FS, number=6, description="t1_tse_fs_sag"),
    }
    if repeat_t2:
        uids["t2 repeat"] = write_series(root / "S8", "MR_small.dcm", T2, number=8, description="T2 TSE AX repeat")
    (root / "notes.txt").write_text("scanned on the 3 T magnet\n")
    return uids


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("study") / "hip01"
    return root, make_study(root)


@pytest.fixture(scope="module")
def imported(study: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    import_studies([study[0]], out, label=2, head_slice=7)
    return out


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture):
    """The importer's log records, even after ``setup_logging`` stopped ``osteoscope`` logs from propagating."""
    logger = logging.getLogger(importer.__name__)
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def header(
    description: str = "", scanning: str = "SE", variant: str = "NONE", options: str = "", **tags: str
) -> Dataset:
    """A series header with the tags the rules read."""
    ds = Dataset()
    ds.SeriesDescription = description
    ds.ScanningSequence, ds.SequenceVariant = scanning.split("\\"), variant.split("\\")
    ds.ScanOptions = options.split("\\") if options else ""
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("ds", "expected"),
    [
        (header("t1_tse_cor"), "t1"),
        (header("t1_fse_cor"), "t1"),  # FSE is fast spin echo, not fat suppression
        (header("T1 TSE COR FS"), "t1fs"),
        (header("t1_tse_cor", options="PFP\\FS"), "t1fs"),
        (header("t1_tse_cor", SpectrallySelectedSuppression="FAT"), "t1fs"),
        (header("T1 VIBE DIXON_W"), "t1fs"),
        (header("pd_spair_cor"), "pdfs"),
        (header("PDFS COR"), "pdfs"),
        (header("PD TSE COR"), None),  # proton density without fat suppression is none of the five
        (header("COR STIR"), "stir"),
        (header("tirm_cor"), "stir"),
        (header("", scanning="SE\\IR"), "stir"),
        (header("MPRAGE", scanning="GR\\IR", variant="SK\\SP\\MP"), None),
        (header("T2 TSE AX"), "t2"),
        (header("t2_tse_fs_cor"), "t2"),
        (header("T2* GRE"), None),
        (header("localizer", scanning="GR"), None),
    ],
)
def test_default_rules(ds: Dataset, expected: str | None) -> None:
    rule = load_mapping().match(ds)
    assert (rule.protocol if rule else None) == expected


def test_a_study_is_planned_protocol_by_protocol(study: tuple[Path, dict[str, str]], log) -> None:
    root, uids = study
    plan = plan_study(root, load_mapping())
    assert {p: s.uid for p, s in plan.assigned.items()} == {p: uids[p] for p in GRIDS}
    assert [(s.uid, why) for s, why in plan.unassigned] == [(uids["localiser"], "no rule matched")]
    assert not plan.duplicates and not plan.ignored
    assert "notes.txt" in log.text and "non-DICOM" in log.text
    assert any(line.startswith('unassigned: series 1 "localizer"') for line in plan.lines())


def test_duplicates_are_refused_naming_both_and_resolved_by_pick_or_rule(tmp_path: Path) -> None:
    root = tmp_path / "hip02"
    uids = make_study(root, repeat_t2=True)
    plan = plan_study(root, load_mapping())
    assert "t2" not in plan.assigned and [s.uid for s in plan.duplicates["t2"]] == [uids["t2"], uids["t2 repeat"]]
    with pytest.raises(DataError) as error:
        import_studies([root], tmp_path / "out")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    for part in ('series 3 "T2 TSE AX"', uids["t2"], 'series 8 "T2 TSE AX repeat"', uids["t2 repeat"], "--pick t2="):
        assert part in message
    assert not (tmp_path / "out" / "manifest.csv").exists()  # nothing half done

    with pytest.raises(DataError, match=r"--pick t2=\.\.\. and --pick t1=8 both choose series 8"):
        plan_study(root, load_mapping(), {"t2": "8", "t1": "8"})
    picked = plan_study(root, load_mapping(), {"t2": "8"})
    assert picked.assigned["t2"].uid == uids["t2 repeat"]
    assert [s.uid for s, _ in picked.ignored] == [uids["t2"]]
    by_uid = plan_study(root, load_mapping(), {"t2": uids["t2"]})
    assert by_uid.assigned["t2"].uid == uids["t2"]
    with pytest.raises(ConfigError, match="matches no SeriesNumber"):
        import_studies([root], tmp_path / "out", picks={"t2": "99"})

    user = tmp_path / "site.yaml"
    user.write_text(
        "rules:\n"
        "  - protocol: ignore\n    SeriesDescription: '^t2 tse ax$'\n"
        "  - protocol: t2\n    SeriesDescription: 'repeat'\n"
    )
    mapped = plan_study(root, load_mapping(user))
    assert mapped.assigned["t2"].uid == uids["t2 repeat"]
    assert mapped.reasons[uids["t2 repeat"]] == "site.yaml rule 2"
    assert [(s.uid, why) for s, why in mapped.ignored] == [(uids["t2"], "site.yaml rule 1")]


def test_a_user_mapping_comes_first_and_is_checked(tmp_path: Path, study: tuple[Path, dict[str, str]]) -> None:
    user = tmp_path / "site.yaml"
    user.write_text(
        "protocols: [dwi]\n"
        "fat_suppression:\n  ScanOptions: 'nothing'\n"  # replaces the default's ScanOptions pattern
        "rules:\n  - protocol: dwi\n    SeriesDescription: 'localizer'\n"
    )
    mapping = load_mapping(user)
    assert mapping.protocols == ("t1", "t2", "pdfs", "stir", "t1fs", "dwi")
    assert mapping.match(header("localizer")).protocol == "dwi"
    assert mapping.match(header("t1_tse_cor", options="FS")).protocol == "t1"  # FS no longer counts
    assert load_mapping().match(header("t1_tse_cor", options="FS")).protocol == "t1fs"
    plan = plan_study(study[0], mapping)
    assert plan.assigned["dwi"].uid == study[1]["localiser"]
    for text, message in [
        ("rules:\n  - protocol: t1\n    SeriesDescripton: x\n", "'SeriesDescripton' is not a DICOM keyword"),
        ("rules:\n  - protocol: t3\n    SeriesDescription: x\n", "protocol 't3' is none of"),
        ("rules:\n  - protocol: t1\n", "has no condition"),
        ("rules:\n  - protocol: t1\n    SeriesDescription: '('\n", "bad regular expression"),
        ("rule:\n  - protocol: t1\n", "unknown key 'rule' (did you mean rules?)"),
        ("rules: [\n", "not readable YAML"),
    ]:
        user.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_mapping(user)
        assert message in str(error.value) and str(user) in str(error.value)
        assert len(str(error.value).splitlines()) == 1


def test_protocols_are_resampled_onto_the_reference_grid(imported: Path, study: tuple[Path, dict[str, str]]) -> None:
    (row,) = read_rows(imported / "manifest.csv")
    assert row["case_id"] == "hip01" and row["patient_id"] == PATIENT and row["label"] == "2"
    assert row["head_slice"] == "7"
    assert {p: row[f"image_{p}"] for p in GRIDS} == {p: f"images/hip01_{p}.nii.gz" for p in GRIDS}
    files = {p: nib.load(imported / row[f"image_{p}"]) for p in GRIDS}
    reference = read_image(imported / row["image_t1"])
    for protocol, nifti in files.items():
        assert nifti.shape == (T1.size, T1.size, T1.slices)  # (x, y, z) as written
        assert np.allclose(nifti.affine, files["t1"].affine)
        image = read_image(imported / row[f"image_{protocol}"])
        assert image.array.shape == reference.array.shape and image.spacing == reference.spacing
        assert np.allclose(image.meta["index_to_lps"], reference.meta["index_to_lps"])
    # the reference grid is the T1 series' own: origin, direction, spacing from its DICOM geometry
    geometry = np.asarray(reference.meta["index_to_lps"])
    assert np.allclose(geometry, T1.index_to_lps(), atol=1e-4)
    assert reference.spacing == (T1.gap, T1.spacing, T1.spacing)

    # linear resampling of the linear anatomy is exact where a voxel lies inside the other grid
    zyx = np.indices(reference.array.shape).reshape(3, -1)
    points = (geometry[:3, :3] @ zyx + geometry[:3, 3:]).T
    truth = field_value(points)
    for protocol in ("t1", "t2", "pdfs", "t1fs"):
        moved = read_image(imported / row[f"image_{protocol}"]).array.reshape(-1)
        grid = GRIDS[protocol]
        index = np.linalg.solve(grid.index_to_lps(), np.vstack([points.T, np.ones(len(points))]))[:3]
        limits = np.array([[grid.slices - 1], [grid.size - 1], [grid.size - 1]])
        inside = np.all((index >= 0) & (index <= limits), axis=0)
        assert inside.sum() > 0.2 * inside.size, protocol
        assert np.abs(moved[inside] - truth[inside]).max() < 1.0, protocol
        assert np.all(moved[np.any((index < -0.5) | (index > limits + 0.5), axis=0)] == 0), protocol

    # the bright voxel planted in the oblique STIR lands where it is in the patient, within a voxel: the peak of
    # what is left after the anatomy (reproduced exactly elsewhere) is taken away
    stir = read_image(imported / row["image_stir"]).array
    index = np.linalg.solve(STIR.index_to_lps(), np.vstack([points.T, np.ones(len(points))]))[:3]
    inside = np.all((index >= 0) & (index <= [[STIR.slices - 1], [STIR.size - 1], [STIR.size - 1]]), axis=0)
    left = np.where(inside.reshape(stir.shape), stir - truth.reshape(stir.shape), 0)
    peak = np.unravel_index(np.argmax(left), stir.shape)
    marked = np.rint(np.linalg.solve(STIR.index_to_lps(), [*MARKER, 1.0])[:3])
    where = (STIR.index_to_lps() @ [*marked, 1.0])[:3]
    expected = np.linalg.solve(geometry, [*where, 1.0])[:3]
    assert np.all(np.abs(np.asarray(peak) - expected) <= 1.0), (peak, expected)
    assert left.max() > 100 and np.sort(left.reshape(-1))[-50] < 1.0  # one small blob, the rest exact


def test_the_manifest_feeds_the_task_with_one_and_three_slices(imported: Path) -> None:
    samples = {}
    for slices, stack, shape in [
        (1, "channels", (10, 32, 32)),
        (3, "channels", (20, 32, 32)),
        (3, "protocols", (5, 3, 32, 32)),
    ]:
        task = make_task("onfh-mr-staging", {"size": [32, 32], "slices": slices, "stack": stack})
        schema = task.schema
        manifest = load_manifest(
            imported, required_labels=schema.labels, label_values=schema.label_values, any_of_columns=schema.any_of
        )
        (case,) = manifest.cases
        builder = task.builder(False, None)
        sample = samples[slices, stack] = builder(case, None)
        assert sample["image"].shape == shape and sample["present"].tolist() == [True] * 5
        assert task.model_kwargs()["in_chans"] == (builder.channels if stack == "channels" else slices)
        assert int(task.target(case)) == 2
    # channels: protocol by protocol, slices in order, then the present-planes
    channels, protocols = samples[3, "channels"]["image"], samples[3, "protocols"]["image"]
    assert torch.equal(channels[:15], protocols.reshape(15, 32, 32)) and torch.all(channels[15:] == 1)
    # an image target from a volume (pretext stage) is its head slice, as a 1-slice input is
    pretext = MultiProtocol(columns=("image_t1",), size=(32, 32), slices=3, target_column="image_t2")
    assert torch.equal(pretext(case, None)["label"][0], samples[1, "channels"]["image"][1])
    # the head slice (7 of 12 axial) is the centre, its neighbours around it; the middle one without it
    single = MultiProtocol(columns=("image_t1",), size=(32, 32), present_planes=False)
    three = MultiProtocol(columns=("image_t1",), size=(32, 32), present_planes=False, slices=3)
    planes = three.planes(case, "image_t1")
    volume = read_image(case.images["image_t1"]).array
    assert np.array_equal(planes, volume[6:9]) and np.array_equal(single.planes(case, "image_t1")[0], volume[7])
    assert np.array_equal(single.planes(dataclasses.replace(case, extra={}), "image_t1")[0], volume[6])
    coronal = MultiProtocol(columns=("image_t1",), size=(32, 32), slice_axis=1, slices=3)
    expected = [resize(plane, (32, 32)) for plane in np.moveaxis(volume[:, 6:9], 1, 0)]
    assert np.allclose(coronal.planes(case, "image_t1"), expected)
    bad = dataclasses.replace(case, extra={"head_slice": "12"})
    with pytest.raises(DataError, match="slice 12 is outside the 12 slices along axis 0"):
        single.decode(bad)


def test_slice_options_are_checked_and_2d_images_keep_working(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    for options, message in [
        ({"slices": 2}, "slices must be odd"),
        ({"slice_axis": 3}, "slice_axis must be 0, 1 or 2"),
        ({"slices": 3, "size": [16, 16, 16]}, "give a 2-D size"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_task("onfh-mr-staging", options)
    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 4000, (24, 24)).astype(np.uint16)).save(tmp_path / "t1.png")
    (tmp_path / "manifest.csv").write_text("case_id,patient_id,image_t1,label\nc1,p1,t1.png,1\n")
    (case,) = load_manifest(tmp_path).cases
    sample = make_task("onfh-mr-staging", {"size": [16, 16]}).builder(False, None)(case, None)
    assert sample["image"].shape == (10, 16, 16) and sample["present"].tolist() == [True] + [False] * 4
    with pytest.raises(DataError, match="holds a 2-D image; slices: 3 needs 3-D volumes"):
        make_task("onfh-mr-staging", {"size": [16, 16], "slices": 3}).builder(False, None)(case, None)


def test_reference_fallback_head_slice_range_and_appending(
    study: tuple[Path, dict[str, str]], imported: Path, tmp_path: Path, log
) -> None:
    root = tmp_path / "no-t1"
    uids = make_study(root)
    user = tmp_path / "no-t1.yaml"
    user.write_text(f"rules:\n  - protocol: ignore\n    SeriesInstanceUID: '^{uids['t1']}$'\n")
    (case,) = import_studies([root], imported, mapping=user, patient_id="P2")
    assert case.reference == "t2" and "t1" not in case.images and "no t1 series" in log.text
    rows = read_rows(imported / "manifest.csv")
    assert [r["case_id"] for r in rows] == ["hip01", "no-t1"]
    assert rows[1]["image_t1"] == "" and rows[1]["patient_id"] == "P2" and rows[1]["label"] == ""
    assert nib.load(imported / rows[1]["image_stir"]).shape == (T2.size, T2.size, T2.slices)
    with pytest.raises(DataError, match="'hip01' is already in the manifest"):
        import_studies([study[0]], imported)
    with pytest.raises(DataError, match=r"--head-slice 40 is outside the 40 coronal slices \(0-39\)"):
        import_studies([study[0]], tmp_path / "other", reference="t2", head_slice=40, slice_axis=1)
    # the PDFS grid is (near) coronal: its slices are axis 1 of the volumes as read back
    assert read_axes(PDFS.index_to_lps())[0] == 1 and read_axes(T1FS.index_to_lps())[0] == 2


def test_a_series_without_geometry_cannot_be_placed(tmp_path: Path) -> None:
    folder = tmp_path / "hip03" / "S2"
    write_series(folder, "MR_small.dcm", T1, number=2, description="T1 TSE AX")
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        del ds.ImagePositionPatient
        ds.save_as(file)
    with pytest.raises(DataError, match=r'series 2 "T1 TSE AX" .* gives no ImagePositionPatient') as error:
        import_studies([tmp_path / "hip03"], tmp_path / "out")
    assert len(str(error.value).splitlines()) == 1


def test_the_command_imports_and_lists(study: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, uids = study
    dry = CliRunner().invoke(app, ["import-mr", str(root), "--out", str(tmp_path / "d"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert 'stir: series 5 "" (UID' in dry.output and "unassigned: series 1" in dry.output
    assert not (tmp_path / "d").exists()
    args = ["import-mr", str(root), "--out", str(tmp_path / "d"), "--reference", "stir", "--case-id", "h1"]
    result = CliRunner().invoke(app, [*args, "--label", "3", "--pick", f"t2={uids['t2']}"])
    assert result.exit_code == 0, result.output
    assert "case h1 (patient ONFH-001, reference stir)" in result.output and f"--pick t2={uids['t2']}" in result.output
    (row,) = read_rows(tmp_path / "d" / "manifest.csv")
    assert row["label"] == "3" and nib.load(tmp_path / "d" / row["image_t1"]).shape == (34, 34, 9)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: (folder / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()),
         "the study folder holds no MR series (modalities found: CT)"),
        (lambda folder: (folder / "a.txt").write_text("x"), "holds no DICOM image file (1 other file(s))"),
    ],
)  # fmt: skip
def test_a_folder_without_mr_is_a_clear_error(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    make(folder)
    result = CliRunner().invoke(app, ["import-mr", str(folder), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, DataError), result.output
    assert message in str(result.exception) and str(folder) in str(result.exception)
    assert len(str(result.exception).splitlines()) == 1


def test_an_empty_folder_is_one_error_line_from_the_command(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    script = "from osteoscope.cli import main; main()"
    args = [sys.executable, "-c", script, "import-mr", str(tmp_path / "study"), "--out", str(tmp_path / "o")]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: file {tmp_path / 'study'}: the study folder holds no files"]
    assert not (tmp_path / "o").exists()
