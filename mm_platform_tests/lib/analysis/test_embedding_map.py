"""Tests for mm_platform.lib.analysis.embedding_map: 2-D projections and PIL scatter plots."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import make_blobs

from mm_platform.lib.analysis.embedding_map import (
    OUTLIER_COLOUR,
    PALETTE,
    group_colour,
    png_data_uri,
    png_markdown,
    project_2d,
    scatter_png,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=400, centers=4, n_features=12, cluster_std=0.6, random_state=5)
    return X, y


def _separation(coords: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose nearest class centre in 2-D is their own class's."""
    centres = np.stack([coords[y == c].mean(axis=0) for c in np.unique(y)])
    d = ((coords[:, None, :] - centres[None]) ** 2).sum(axis=2)
    return float(np.mean(d.argmin(axis=1) == y))


# -- project_2d -------------------------------------------------------------------------------------------


def test_pca_shape_determinism_and_structure(blobs) -> None:  # type: ignore[no-untyped-def]
    X, y = blobs
    a = project_2d(X, "pca")
    assert a.shape == (400, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, project_2d(X, "pca"))
    # rows are L2-normalised first: scaling a row does not move it
    Xs = X.copy()
    Xs[:10] *= 5.0
    np.testing.assert_allclose(project_2d(Xs, "pca"), a, atol=1e-5)
    assert _separation(a, y) > 0.9


def test_tsne_sample_and_out_of_sample_placement(blobs) -> None:  # type: ignore[no-untyped-def]
    X, y = blobs
    a = project_2d(X, "tsne", sample_size=150, seed=1)
    assert a.shape == (400, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, project_2d(X, "tsne", sample_size=150, seed=1))
    assert not np.array_equal(a, project_2d(X, "tsne", sample_size=150, seed=2))
    assert _separation(a, y) > 0.95  # rows placed from their neighbours land in their own cluster


def test_degenerate_inputs_and_errors() -> None:
    assert project_2d(np.ones((1, 5)), "pca").shape == (1, 2)
    assert project_2d(np.zeros((0, 5)), "tsne").shape == (0, 2)
    one_col = project_2d(np.arange(6, dtype=float).reshape(-1, 1) - 2.5, "tsne")
    assert one_col.shape == (6, 2) and np.all(one_col[:, 1] == 0)
    small = project_2d(np.random.default_rng(0).normal(size=(4, 3)), "tsne")  # too small for t-SNE: PCA
    assert small.shape == (4, 2)
    with pytest.raises(ValueError, match="unknown projection method"):
        project_2d(np.ones((3, 3)), "umap")
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.array([[np.nan, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        project_2d(np.ones(5))
    with pytest.raises(ValueError, match="sample_size"):
        project_2d(np.ones((3, 3)), "tsne", sample_size=1)


# -- scatter_png -------------------------------------------------------------------------------------------


def test_scatter_png_size_colours_and_legend(tmp_path: Path, blobs) -> None:  # type: ignore[no-untyped-def]
    X, y = blobs
    coords = project_2d(X, "pca")
    groups = [int(v) for v in y]
    groups[:20] = [-1] * 20
    path = scatter_png(coords, groups, tmp_path / "maps" / "clusters.png", size=500, title="Clusters")
    assert path == tmp_path / "maps" / "clusters.png"
    assert [p.name for p in path.parent.iterdir()] == ["clusters.png"]  # written atomically, no temp left
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (500, 500) and img.mode == "RGB"
        colours = {c for _, c in img.getcolors(maxcolors=500 * 500)}
    for k in range(4):
        assert PALETTE[k] in colours
    assert OUTLIER_COLOUR in colours
    assert (255, 255, 255) in colours


def test_scatter_png_string_groups_many_groups_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(300, 2))
    groups = [f"label_{i % 45}" for i in range(300)]
    path = scatter_png(coords, groups, tmp_path / "labels.png", size=300, point_radius=0)
    with Image.open(path) as img:
        assert img.size == (300, 300)
    # all points identical (zero span) and a non-finite point are drawn without error
    same = np.zeros((5, 2))
    same[0] = np.nan
    scatter_png(same, ["a"] * 5, tmp_path / "same.png", size=200)
    with pytest.raises(ValueError, match="groups"):
        scatter_png(coords, groups[:10], tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        scatter_png(np.zeros((3, 3)), [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="size"):
        scatter_png(coords, groups, tmp_path / "x.png", size=50)


def test_group_colours_distinct() -> None:
    colours = [group_colour(i) for i in range(60)]
    assert len(set(colours)) == 60
    assert colours[: len(PALETTE)] == list(PALETTE)
    assert OUTLIER_COLOUR not in colours


# -- embedding in markdown ---------------------------------------------------------------------------------


def _decode(markdown: str, alt: str) -> Image.Image:
    prefix = f"![{alt}](data:image/png;base64,"
    assert markdown.startswith(prefix) and markdown.endswith(")")
    return Image.open(io.BytesIO(base64.b64decode(markdown[len(prefix) : -1])))


def test_png_markdown_small_image_embedded_as_is(tmp_path: Path) -> None:
    path = scatter_png(np.eye(3)[:, :2], [0, 1, 2], tmp_path / "m.png", size=200)
    md = png_markdown(path, "cluster map")
    img = _decode(md, "cluster map")
    assert img.size == (200, 200)
    assert png_data_uri(path) == md[len("![cluster map](") : -1]
    assert _decode(png_markdown(path, "a [b]"), "a (b)").size == (200, 200)


def test_png_markdown_downscales_large_images(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 600, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(noise).save(path)
    assert path.stat().st_size > 300_000
    uri = png_data_uri(path, max_bytes=200_000)
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert len(raw) <= 200_000
    with Image.open(io.BytesIO(raw)) as img:
        assert img.size[0] < 600 and img.size[0] == img.size[1]
    assert path.stat().st_size > 300_000  # the file itself is untouched
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable image"):
        png_data_uri(tmp_path / "bad.png")
