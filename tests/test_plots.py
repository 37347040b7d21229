"""Tests for osteoscope.report.plots: valid PNGs are written and bad inputs are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteoscope.report import plots
from osteoscope.report.plots import (
    plot_confusion_matrix,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
    plot_roc_multiclass,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    """The file exists, starts with the PNG signature and decodes to a non-trivial image."""
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.width > 200 and image.height > 200
        # Something was drawn: not a single flat colour.
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) != 1


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    curves = {"model": (y, rng.normal(y, 1.0)), "baseline": (y, rng.normal(0.3 * y, 1.0))}
    out = plot_roc(curves, tmp_path / "nested" / "roc.png", operating_points={"reader 1": (0.2, 0.7)})
    assert out == tmp_path / "nested" / "roc.png"
    _assert_png(out)


def test_plot_roc_multiclass_draws_one_vs_rest_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)  # class 3 ("IV") never occurs
    logits = rng.normal(size=(90, 4))
    logits[np.arange(90), y] += 2.0
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["I", "II", "III", "IV"]
    _assert_png(plot_roc_multiclass(y, prob, names, tmp_path / "roc_mc.png"))

    captured: dict = {}
    monkeypatch.setattr(plots, "plot_roc", lambda curves, path, title: captured.update(curves=curves, title=title))
    plot_roc_multiclass(y, prob, names, tmp_path / "unused.png")
    assert list(captured["curves"]) == ["I vs rest", "II vs rest", "III vs rest"]
    labels, scores = captured["curves"]["II vs rest"]
    np.testing.assert_array_equal(labels, (y == 1).astype(int))
    np.testing.assert_array_equal(scores, prob[:, 1])
    assert "no cases of IV" in captured["title"]
    with pytest.raises(ValueError, match="class names"):
        plot_roc_multiclass(y, prob, names[:3], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="two classes"):
        plot_roc_multiclass(np.zeros(90, dtype=int), prob, names, tmp_path / "bad.png")


def test_plot_roc_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        plot_roc({"model": ([0, 1, 1], [0.2, 0.4])}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="one positive and one negative"):
        plot_roc({"model": ([1, 1], [0.2, 0.4])}, tmp_path / "b.png")
    with pytest.raises(ValueError, match="operating point"):
        plot_roc({"model": ([0, 1], [0.2, 0.4])}, tmp_path / "c.png", operating_points={"r": (1.5, 0.2)})
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path / "d.png")
    assert not list(tmp_path.iterdir())


def test_plot_confusion_matrix_writes_png(tmp_path: Path) -> None:
    matrix = [[50, 3, 1], [4, 20, 2], [0, 1, 9]]
    out = plot_confusion_matrix(matrix, ["normal", "AFF", "NFF"], tmp_path / "cm.png")
    _assert_png(out)
    # A class that never occurs (empty row) must not break the row normalisation.
    out2 = plot_confusion_matrix(np.array([[5, 0], [0, 0]]), ["neg", "pos"], tmp_path / "cm2.png")
    _assert_png(out2)


def test_plot_confusion_matrix_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[1, 2, 3], [4, 5, 6]], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix([[1, -2], [3, 4]], ["a", "b"], tmp_path / "x.png")


def test_plot_roc_draws_reader_operating_point(tmp_path: Path) -> None:
    # A human reader's (fpr, tpr) is an operating point; it must actually change the figure.
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    s = np.array([0.1, 0.3, 0.6, 0.4, 0.8, 0.9, 0.2, 0.7])
    plain = plot_roc({"model": (y, s)}, tmp_path / "plain.png")
    with_reader = plot_roc({"model": (y, s)}, tmp_path / "reader.png", operating_points={"reader": (0.1, 0.4)})
    _assert_png(with_reader)
    with Image.open(plain) as a, Image.open(with_reader) as b:
        diff = np.abs(np.asarray(a.convert("L"), dtype=int) - np.asarray(b.convert("L"), dtype=int))
    assert (diff > 0).sum() > 50


def test_plot_precision_recall_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    curves = {"model": (y, rng.normal(y, 1.0)), "baseline": (y, rng.normal(0.2 * y, 1.0))}
    out = plot_precision_recall(curves, tmp_path / "sub" / "pr.png")
    assert out == tmp_path / "sub" / "pr.png"
    _assert_png(out)


def test_plot_precision_recall_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one curve"):
        plot_precision_recall({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"'model'.*positive case"):
        plot_precision_recall({"model": ([0, 0], [0.2, 0.4])}, tmp_path / "b.png")
    assert not list(tmp_path.iterdir())


def test_plot_reliability_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 200)
    y = (rng.uniform(0, 1, 200) < p**2).astype(int)
    out = plot_reliability(y, p, tmp_path / "rel.png", n_bins=8)
    _assert_png(out)
    # Empty bins (all predictions in one half) must not break the plot.
    _assert_png(plot_reliability([0, 1, 1], [0.1, 0.2, 0.3], tmp_path / "rel2.png"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_reliability([0, 1], [0.2, 1.5], tmp_path / "bad.png")
