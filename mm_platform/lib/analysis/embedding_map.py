"""2-D maps of embeddings and PNG scatter plots drawn with PIL (no matplotlib).

:func:`project_2d` places every row on a plane (cosine geometry: rows are L2-normalised first), either by PCA
on all rows or by t-SNE fitted on a seeded sample whose coordinates are then extended to the other rows by
nearest-neighbour averaging. :func:`scatter_png` draws such a map coloured by group (cluster id, class label)
with a legend, and :func:`png_markdown` embeds the PNG in markdown as a base64 data URI (for Dagster metadata),
downscaled when too large.
"""

from __future__ import annotations

import base64
import colorsys
import contextlib
import io
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Methods accepted by :func:`project_2d`.
METHODS: tuple[str, ...] = ("pca", "tsne")
#: Sampled neighbours whose coordinates place a row left out of the t-SNE sample.
N_PLACEMENT_NEIGHBOURS = 5
#: Qualitative palette (Tableau 10, then the lighter Tableau 20 tones); further groups get golden-ratio hues.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
#: Colour of outliers (group ``-1`` / ``"-1"``), drawn beneath every other group.
OUTLIER_COLOUR = (190, 190, 190)
#: Default cap on the PNG embedded by :func:`png_data_uri` / :func:`png_markdown`.
MAX_EMBED_BYTES = 300_000
_BLOCK = 4096


def _unit(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.where(norms > 1e-12, X / np.where(norms > 1e-12, norms, 1.0), 0.0)


def _pca_2d(U: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = U.shape
    k = min(2, d, n)
    out = np.zeros((n, 2), dtype=np.float64)
    if n < 2 or k < 1:
        return out
    out[:, :k] = PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(U)
    return out


def project_2d(X: np.ndarray, method: str = "pca", *, sample_size: int = 3000, seed: int = 0) -> np.ndarray:
    """2-D coordinates ``(n, 2)`` float32 of the rows of ``X`` (L2-normalised first: cosine geometry).

    * ``"pca"``: the first two principal components of all rows (sign fixed by sklearn's ``svd_flip``).
    * ``"tsne"``: ``sklearn.manifold.TSNE`` (cosine metric, PCA initialisation, ``random_state=seed``,
      perplexity ``min(30, (m - 1) / 3)``) fitted on a seeded sample of ``m = min(n, sample_size)`` rows. Every
      other row is placed at the mean of the coordinates of its 5 most cosine-similar sampled rows -- a cheap
      out-of-sample extension that puts a row inside the neighbourhood it would have joined, though it never
      pushes rows apart as t-SNE would. Samples of fewer than 5 rows fall back to PCA.

    Degenerate inputs (fewer than 2 rows, one column) give zeros in the missing coordinates. The same input
    and seed always give the same coordinates. Raises ValueError on an unknown method, a non-2-D or non-finite
    matrix, or ``sample_size < 2``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r} (expected one of {METHODS})")
    if sample_size < 2:
        raise ValueError(f"sample_size must be >= 2, got {sample_size}")
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("matrix contains NaN or infinite values")
    n = arr.shape[0]
    U = _unit(arr)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if U.size < 2_000_000 else None):
        if method == "pca" or n < 5 or U.shape[1] < 2:
            return _pca_2d(U, seed).astype(np.float32)
        from sklearn.manifold import TSNE

        if n > sample_size:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=sample_size, replace=False))
        else:
            sample = np.arange(n)
        m = sample.size
        if m < 5:
            return _pca_2d(U, seed).astype(np.float32)
        tsne = TSNE(
            n_components=2,
            perplexity=min(30.0, (m - 1) / 3.0),
            metric="cosine",
            init="pca",
            random_state=seed,
            n_jobs=1,
        )
        sample_coords = tsne.fit_transform(U[sample]).astype(np.float64)
        out = np.zeros((n, 2), dtype=np.float64)
        out[sample] = sample_coords
        rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
        k = min(N_PLACEMENT_NEIGHBOURS, m)
        S_unit = U[sample]
        for start in range(0, rest.size, _BLOCK):
            idx = rest[start : start + _BLOCK]
            sims = U[idx] @ S_unit.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            out[idx] = sample_coords[top].mean(axis=1)
    return out.astype(np.float32)


# -- drawing ---------------------------------------------------------------------------------------------


def _is_outlier(g: object) -> bool:
    return (isinstance(g, int | np.integer) and int(g) == -1) or (isinstance(g, str) and g.strip() == "-1")


def _group_sort_key(g: object) -> tuple[int, float, str]:
    if isinstance(g, int | np.integer):
        return (0, float(g), "")
    return (1, 0.0, str(g))


def group_colour(position: int) -> tuple[int, int, int]:
    """Colour of the ``position``-th group: :data:`PALETTE` then hues spaced by the golden ratio."""
    if position < len(PALETTE):
        return PALETTE[position]
    hue = ((position - len(PALETTE)) * 0.6180339887498949 + 0.13) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.85)
    return (round(r * 255), round(g * 255), round(b * 255))


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _text_width(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _write_atomic(image: Image.Image, path: Path, **save_kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", **save_kwargs)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def scatter_png(
    coords: np.ndarray,
    groups: Sequence[int | str],
    path: Path | str,
    *,
    size: int = 900,
    title: str | None = None,
    point_radius: int = 3,
    max_legend: int = 30,
) -> Path:
    """Draw a ``size`` x ``size`` PNG scatter of ``coords`` (n, 2) coloured by ``groups``; returns ``path``.

    No axes: the points are scaled uniformly (aspect kept) into the plot area left of a legend panel, with
    padding. Groups are ordered (integers ascending, then strings alphabetically) and coloured by
    :func:`group_colour`; outliers (``-1`` or ``"-1"``) are grey and drawn first, beneath the others. The legend
    lists each group's name and count (at most ``max_legend`` entries, then "+N more"). Non-finite coordinates
    are skipped. The file is written atomically (temporary file + ``os.replace``).
    """
    pts = np.asarray(coords, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"coords must have shape (n, 2), got {pts.shape}")
    if len(groups) != pts.shape[0]:
        raise ValueError(f"{len(groups)} groups for {pts.shape[0]} points")
    if size < 100:
        raise ValueError(f"size must be >= 100 pixels, got {size}")
    if point_radius < 0:
        raise ValueError(f"point_radius must be >= 0, got {point_radius}")
    path = Path(path)
    keys = [int(g) if isinstance(g, np.integer) else g for g in groups]
    counts = Counter(keys)
    ordered = sorted((g for g in counts if not _is_outlier(g)), key=_group_sort_key)
    colour = {g: group_colour(i) for i, g in enumerate(ordered)}
    outliers = [g for g in counts if _is_outlier(g)]
    for g in outliers:
        colour[g] = OUTLIER_COLOUR

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font_px = max(10, size // 64)
    font = _font(font_px)
    title_font = _font(round(font_px * 1.3))
    pad = max(12, size // 40)
    top = pad
    if title:
        draw.text((pad, pad), title, fill=(20, 20, 20), font=title_font)
        top = pad + round(font_px * 1.3) + pad // 2

    # legend panel on the right
    legend_items = [*ordered, *outliers]
    shown = legend_items[:max_legend]
    labels = [f"{'outliers' if _is_outlier(g) else g} ({counts[g]})" for g in shown]
    if len(legend_items) > max_legend:
        labels.append(f"+{len(legend_items) - max_legend} more")
    swatch = font_px
    line_h = round(font_px * 1.5)
    text_w = max((_text_width(draw, s, font) for s in labels), default=0)
    legend_w = min(size // 3, swatch + 3 * (pad // 2) + text_w) if labels else 0
    plot_left, plot_top = pad, top
    plot_right = size - pad - (legend_w + pad if legend_w else 0)
    plot_bottom = size - pad
    if labels:
        lx0 = size - pad - legend_w
        ly1 = min(plot_bottom, top + pad // 2 + line_h * len(labels))
        draw.rectangle((lx0, top, size - pad, ly1), outline=(160, 160, 160), fill=(250, 250, 250))
        for i, text in enumerate(labels):
            y = top + pad // 4 + i * line_h
            if y + line_h > plot_bottom:
                break
            if i < len(shown):
                x = lx0 + pad // 2
                draw.rectangle((x, y + 2, x + swatch, y + 2 + swatch), fill=colour[shown[i]])
            draw.text((lx0 + pad // 2 + swatch + pad // 2, y), text, fill=(30, 30, 30), font=font)

    finite = np.isfinite(pts).all(axis=1)
    if finite.any():
        lo = pts[finite].min(axis=0)
        span = pts[finite].max(axis=0) - lo
        box_w = max(1, plot_right - plot_left - 2 * point_radius)
        box_h = max(1, plot_bottom - plot_top - 2 * point_radius)
        scale = min(
            box_w / span[0] if span[0] > 0 else math.inf, box_h / span[1] if span[1] > 0 else math.inf
        )
        scale = scale if math.isfinite(scale) else 0.0
        off_x = plot_left + point_radius + (box_w - span[0] * scale) / 2
        off_y = plot_top + point_radius + (box_h - span[1] * scale) / 2
        px = off_x + (pts[:, 0] - lo[0]) * scale
        py = off_y + (span[1] - (pts[:, 1] - lo[1])) * scale  # y axis points up
        r = point_radius
        draw_order = [*outliers, *ordered]
        position = {g: i for i, g in enumerate(draw_order)}
        codes = np.array([position[key] for key in keys], dtype=np.int64)
        for code, g in enumerate(draw_order):
            fill = colour[g]
            for i in np.flatnonzero((codes == code) & finite).tolist():
                x, y = float(px[i]), float(py[i])
                if r == 0:
                    draw.point((x, y), fill=fill)
                else:
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    _write_atomic(image, path, optimize=True)
    return path


def _png_bytes(path: Path, max_bytes: int) -> bytes:
    """The PNG's bytes, downscaled (halving the pixel count per step, >= 64 px wide) until <= ``max_bytes``."""
    data = path.read_bytes()
    if len(data) <= max_bytes:
        return data
    with Image.open(path) as src:
        image = src.convert("RGBA") if src.mode in ("RGBA", "LA", "P") else src.convert("RGB")
    while len(data) > max_bytes and min(image.size) > 64:
        w, h = image.size
        image = image.resize(
            (max(1, round(w / math.sqrt(2))), max(1, round(h / math.sqrt(2)))), Image.Resampling.LANCZOS
        )
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return data


def png_data_uri(path: Path | str, max_bytes: int = MAX_EMBED_BYTES) -> str:
    """``data:image/png;base64,...`` of the PNG at ``path``, downscaled when larger than ``max_bytes``.

    The file on disk is left untouched; downscaling stops at 64 px, so a tiny but incompressible image may still
    exceed the cap. ValueError when the file is not an image PIL can read.
    """
    path = Path(path)
    try:
        with Image.open(path) as probe:
            probe.verify()
    except Exception as exc:  # PIL raises several error types for broken files
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    return "data:image/png;base64," + base64.b64encode(_png_bytes(path, max_bytes)).decode("ascii")


def png_markdown(path: Path | str, alt: str = "embedding map", max_bytes: int = MAX_EMBED_BYTES) -> str:
    """Markdown image ``![alt](data:image/png;base64,...)`` of the PNG (see :func:`png_data_uri`)."""
    safe_alt = alt.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{safe_alt}]({png_data_uri(path, max_bytes)})"
