"""Tests for mm_platform.lib.media: safe path resolution, image inspection/decoding, text normalisation.

Everything is real: images are encoded by PIL (or crafted byte-for-byte with correct CRCs for the
decompression-bomb cases) into ``tmp_path``; symlinks, directories and FIFOs are real filesystem objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import warnings
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm_platform.lib import media
from mm_platform.lib.media import (
    ALLOWED_IMAGE_FORMATS,
    DEFAULT_MAX_TEXT_CHARS,
    ImageInfo,
    MediaError,
    bytes_sha256,
    check_relative_path,
    inspect_audio,
    inspect_image,
    load_image_rgb,
    normalize_text,
    resolve_media_path,
    sniff_image_header,
    text_sha256,
)

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def noisy_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def noisy(w: int, h: int, mode: str, seed: int = 0) -> Image.Image:
    """Noise image in ``mode``; RGBA gets a real (non-constant) alpha channel so encoders keep it."""
    im = noisy_rgb(w, h, seed)
    if mode == "RGBA":
        alpha = Image.fromarray(np.random.default_rng(seed + 1).integers(0, 256, (h, w), dtype=np.uint8), "L")
        out = im.convert("RGBA")
        out.putalpha(alpha)
        return out
    return im.convert(mode)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)
    )


def crafted_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A syntactically valid PNG whose IHDR claims ``width x height`` (8-bit RGB), with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr)
    body += png_chunk(b"IDAT", zlib.compress(b"\x00" * 16) if idat is None else idat)
    body += png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as ei:
        fn(*args, **kwargs)
    assert ei.value.detail, "detail must be specific, not empty"
    assert str(ei.value).startswith(ei.value.reason + ": ")
    return ei.value.reason


@pytest.fixture()
def no_warnings():
    """Fail if any warning (e.g. PIL DecompressionBombWarning) leaks out of the test body."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        yield rec
    assert [str(w.message) for w in rec] == []


# --------------------------------------------------------------------------------------------------
# MediaError
# --------------------------------------------------------------------------------------------------


def test_media_error_fields_and_pickle() -> None:
    e = MediaError("missing_file", "file 'x' does not exist")
    assert (e.reason, e.detail) == ("missing_file", "file 'x' does not exist")
    assert str(e) == "missing_file: file 'x' does not exist"
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, MediaError) and (e2.reason, e2.detail) == (e.reason, e.detail)


# --------------------------------------------------------------------------------------------------
# check_relative_path / resolve_media_path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel", ["a.png", "images/a.png", "./a.png", "a//b.png", "a/../b.png", "ü/ñ.png", "a b.png"]
)
def test_check_relative_path_ok(rel: str) -> None:
    assert check_relative_path(rel) == rel


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("/abs/a.png", "path_outside_batch"),
        ("//host/share/a.png", "path_outside_batch"),
        ("C:\\a.png", "path_outside_batch"),
        ("C:/a.png", "path_outside_batch"),
        ("\\\\host\\share\\a.png", "path_outside_batch"),
        ("..", "path_outside_batch"),
        ("../a.png", "path_outside_batch"),
        ("a/../../a.png", "path_outside_batch"),
        ("", "invalid_path"),
        ("  ", "invalid_path"),
        (".", "invalid_path"),
        ("./", "invalid_path"),
        ("a/..", "invalid_path"),
        ("a\\b.png", "invalid_path"),
        ("a\x00b", "invalid_path"),
        ("a\tb", "invalid_path"),
        ("a\x7fb", "invalid_path"),
        ("\udc80.png", "invalid_path"),
        (None, "invalid_path"),
        (3, "invalid_path"),
        (b"a.png", "invalid_path"),
    ],
)
def test_check_relative_path_rejects(rel: object, reason: str) -> None:
    assert reason_of(check_relative_path, rel) == reason


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    b = tmp_path / "batch"
    (b / "images").mkdir(parents=True)
    (b / "images" / "a.png").write_bytes(encode(noisy_rgb(4, 4), "PNG"))
    return b


def test_resolve_ok(batch: Path) -> None:
    p = resolve_media_path(batch, "images/a.png")
    assert p == (batch / "images" / "a.png").resolve()
    assert p.is_absolute() and p.is_file()
    assert resolve_media_path(batch, "./images/../images/a.png") == p


def test_resolve_symlink_inside_batch_ok(batch: Path) -> None:
    os.symlink("images/a.png", batch / "alias.png")
    assert resolve_media_path(batch, "alias.png") == (batch / "images" / "a.png").resolve()


def test_resolve_batch_dir_itself_symlinked(tmp_path: Path, batch: Path) -> None:
    link = tmp_path / "link-to-batch"
    os.symlink(batch, link)
    assert resolve_media_path(link, "images/a.png") == (batch / "images" / "a.png").resolve()


def test_resolve_absolute(batch: Path) -> None:
    assert (
        reason_of(resolve_media_path, batch, str((batch / "images" / "a.png").resolve()))
        == "path_outside_batch"
    )


def test_resolve_dotdot_escape(batch: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"x")
    assert reason_of(resolve_media_path, batch, "../secret.png") == "path_outside_batch"
    assert reason_of(resolve_media_path, batch, "images/../../secret.png") == "path_outside_batch"


def test_resolve_symlink_pointing_outside(batch: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(encode(noisy_rgb(4, 4), "PNG"))
    os.symlink(outside, batch / "images" / "evil.png")
    assert reason_of(resolve_media_path, batch, "images/evil.png") == "path_outside_batch"


def test_resolve_symlinked_subdir_pointing_outside(batch: Path, tmp_path: Path) -> None:
    ext = tmp_path / "external"
    ext.mkdir()
    (ext / "x.png").write_bytes(b"x")
    os.symlink(ext, batch / "linkdir")
    assert reason_of(resolve_media_path, batch, "linkdir/x.png") == "path_outside_batch"


def test_resolve_dangling_symlink_outside(batch: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "nothing-here.png", batch / "dangling.png")
    assert reason_of(resolve_media_path, batch, "dangling.png") == "path_outside_batch"


def test_resolve_dangling_symlink_inside(batch: Path) -> None:
    os.symlink("images/nothing.png", batch / "dangling.png")
    assert reason_of(resolve_media_path, batch, "dangling.png") == "missing_file"


def test_resolve_symlink_loop(batch: Path) -> None:
    os.symlink("loop2", batch / "loop1")
    os.symlink("loop1", batch / "loop2")
    assert reason_of(resolve_media_path, batch, "loop1") in ("invalid_path", "missing_file")


def test_resolve_missing_file(batch: Path) -> None:
    assert reason_of(resolve_media_path, batch, "images/nope.png") == "missing_file"
    assert reason_of(resolve_media_path, batch, "nodir/nope.png") == "missing_file"


def test_resolve_missing_batch_dir(tmp_path: Path) -> None:
    assert reason_of(resolve_media_path, tmp_path / "no-batch", "a.png") == "missing_file"


def test_resolve_not_a_file(batch: Path) -> None:
    assert reason_of(resolve_media_path, batch, "images") == "not_a_file"
    assert reason_of(resolve_media_path, batch, "images/") == "not_a_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_resolve_fifo_is_not_a_file(batch: Path) -> None:
    os.mkfifo(batch / "pipe.png")
    assert reason_of(resolve_media_path, batch, "pipe.png") == "not_a_file"
    assert reason_of(inspect_image, batch / "pipe.png") == "not_a_file"


def test_resolve_syntax_errors_first(batch: Path) -> None:
    assert reason_of(resolve_media_path, batch, "") == "invalid_path"
    assert reason_of(resolve_media_path, batch, "a\\b") == "invalid_path"


# --------------------------------------------------------------------------------------------------
# sniff_image_header
# --------------------------------------------------------------------------------------------------


SNIFF_CASES = [
    ("PNG", {}, "RGB"),
    ("JPEG", {"quality": 90}, "RGB"),
    ("JPEG", {"progressive": True}, "RGB"),
    ("GIF", {}, "P"),
    ("BMP", {}, "RGB"),
    ("WEBP", {"lossless": True}, "RGB"),
    ("WEBP", {"quality": 70}, "RGB"),
    ("WEBP", {"lossless": True}, "RGBA"),  # alpha -> VP8X container
    ("WEBP", {"quality": 70}, "RGBA"),
]


@pytest.mark.parametrize(("fmt", "kw", "mode"), SNIFF_CASES)
def test_sniff_image_header(fmt: str, kw: dict, mode: str) -> None:
    im = noisy(37, 23, mode)
    assert sniff_image_header(encode(im, fmt, **kw)) == (fmt, 37, 23)


def test_sniff_bmp_top_down_negative_height() -> None:
    data = bytearray(encode(noisy_rgb(5, 3), "BMP"))
    data[22:26] = struct.pack("<i", -3)
    assert sniff_image_header(bytes(data)) == ("BMP", 5, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello world, not an image", "unreadable_image"),
        (b"", "unreadable_image"),
        (b"\x00\x00\x01\x00", "unreadable_image"),  # ICO: not an accepted format
        (b"II*\x00" + b"\x00" * 20, "unreadable_image"),  # TIFF: not accepted
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated_image"),
        (
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"k\x00v" * 4),
            "unreadable_image",
        ),  # first chunk not IHDR
        (b"GIF89a\x01", "truncated_image"),
        (b"GIF89a\x00\x00\x05\x00", "unreadable_image"),  # zero width
        (b"\xff\xd8\xff", "truncated_image"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 10, "unreadable_image"),  # SOS before any SOF
        (b"RIFF\x00\x00\x00\x00WEBPVP9 " + b"\x00" * 20, "unreadable_image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "truncated_image"),
    ],
)
def test_sniff_image_header_errors(data: bytes, reason: str) -> None:
    assert reason_of(sniff_image_header, data) == reason


# --------------------------------------------------------------------------------------------------
# inspect_image: good images
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kw", "mode_in", "mode_out"),
    [
        ("PNG", {}, "RGB", "RGB"),
        ("PNG", {}, "RGBA", "RGBA"),
        ("PNG", {}, "L", "L"),
        ("JPEG", {"quality": 85}, "RGB", "RGB"),
        ("JPEG", {}, "L", "L"),
        ("GIF", {}, "RGB", "P"),
        ("BMP", {}, "RGB", "RGB"),
        ("WEBP", {"lossless": True}, "RGB", "RGB"),
        ("WEBP", {"quality": 80}, "RGBA", "RGBA"),
    ],
)
def test_inspect_image_good(
    tmp_path: Path, fmt: str, kw: dict, mode_in: str, mode_out: str, no_warnings
) -> None:
    data = encode(noisy(33, 21, mode_in, seed=3), fmt, **kw)
    p = write(tmp_path, f"img.{fmt.lower()}", data)
    info = inspect_image(p)
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height) == (33, 21)
    assert info.format == fmt
    assert info.mode == mode_out
    assert info.n_bytes == len(data) == p.stat().st_size
    assert info.sha256 == hashlib.sha256(data).hexdigest() == bytes_sha256(data)
    assert info.path == str(p)


def test_inspect_image_format_from_content_not_extension(tmp_path: Path) -> None:
    p = write(tmp_path, "really_a_jpeg.png", encode(noisy_rgb(8, 8), "JPEG"))
    assert inspect_image(p).format == "JPEG"


def test_inspect_image_sha_changes_with_bytes(tmp_path: Path) -> None:
    a = inspect_image(write(tmp_path, "a.png", encode(noisy_rgb(8, 8, seed=1), "PNG")))
    b = inspect_image(write(tmp_path, "b.png", encode(noisy_rgb(8, 8, seed=2), "PNG")))
    a2 = inspect_image(tmp_path / "a.png")
    assert a.sha256 != b.sha256
    assert a.sha256 == a2.sha256


def test_allowed_formats() -> None:
    assert set(ALLOWED_IMAGE_FORMATS) == {"PNG", "JPEG", "GIF", "BMP", "WEBP"}


def test_inspect_image_rejects_other_formats(tmp_path: Path) -> None:
    for fmt in ("TIFF", "ICO", "PPM"):
        p = write(tmp_path, f"x.{fmt.lower()}", encode(noisy_rgb(16, 16), fmt))
        assert reason_of(inspect_image, p) == "unreadable_image"


# --------------------------------------------------------------------------------------------------
# inspect_image: bad images
# --------------------------------------------------------------------------------------------------


def test_truncated_png(tmp_path: Path, no_warnings) -> None:
    data = encode(noisy_rgb(64, 64), "PNG")
    for cut in (len(data) // 2, len(data) - 12, 40, 30):
        p = write(tmp_path, f"t{cut}.png", data[:cut])
        assert reason_of(inspect_image, p) == "truncated_image", cut


def test_png_header_cut_off(tmp_path: Path) -> None:
    data = encode(noisy_rgb(8, 8), "PNG")
    assert reason_of(inspect_image, write(tmp_path, "h.png", data[:16])) == "truncated_image"


def test_truncated_jpeg_in_scan_data(tmp_path: Path, no_warnings) -> None:
    data = encode(noisy_rgb(64, 64), "JPEG", quality=95)
    for cut in (len(data) // 2, len(data) - 100, len(data) * 3 // 4):
        p = write(tmp_path, f"t{cut}.jpg", data[:cut])
        assert reason_of(inspect_image, p) == "truncated_image", cut


def test_truncated_jpeg_before_frame_header(tmp_path: Path) -> None:
    data = encode(noisy_rgb(64, 64), "JPEG")
    assert reason_of(inspect_image, write(tmp_path, "h.jpg", data[:10])) == "truncated_image"


def _jpeg_cut_between_sof_and_sos(data: bytes) -> int:
    sof = data.index(b"\xff\xc0")
    sos = data.index(b"\xff\xda")
    assert sof < sos
    # cut inside a DHT segment after the frame header: header fully sniffable, data missing
    dht = data.index(b"\xff\xc4", sof)
    return dht + 10


def test_truncated_jpeg_inside_tables(tmp_path: Path) -> None:
    data = encode(noisy_rgb(64, 64), "JPEG")
    cut = _jpeg_cut_between_sof_and_sos(data)
    assert reason_of(inspect_image, write(tmp_path, "t.jpg", data[:cut])) == "truncated_image"


@pytest.mark.parametrize("kw", [{"lossless": True}, {"quality": 80}])
def test_truncated_webp(tmp_path: Path, kw: dict) -> None:
    data = encode(noisy_rgb(64, 64), "WEBP", **kw)
    assert reason_of(inspect_image, write(tmp_path, "t.webp", data[: len(data) // 2])) == "truncated_image"


def test_truncated_gif_and_bmp_in_pixel_data(tmp_path: Path) -> None:
    for fmt in ("GIF", "BMP"):
        data = encode(noisy_rgb(64, 64), fmt)
        p = write(tmp_path, f"t.{fmt.lower()}", data[: len(data) // 2])
        assert reason_of(inspect_image, p) == "truncated_image", fmt


def test_text_file_named_png(tmp_path: Path, no_warnings) -> None:
    p = write(tmp_path, "fake.png", b"this is a text file, not a PNG image\n")
    with pytest.raises(MediaError) as ei:
        inspect_image(p)
    assert ei.value.reason == "unreadable_image"
    assert "not a supported image" in ei.value.detail


def test_empty_file(tmp_path: Path) -> None:
    p = write(tmp_path, "empty.png", b"")
    assert reason_of(inspect_image, p) == "empty_file"
    assert reason_of(load_image_rgb, p) == "empty_file"


def test_missing_and_directory(tmp_path: Path) -> None:
    assert reason_of(inspect_image, tmp_path / "nope.png") == "missing_file"
    (tmp_path / "d.png").mkdir()
    assert reason_of(inspect_image, tmp_path / "d.png") == "not_a_file"


def test_file_too_large(tmp_path: Path) -> None:
    data = encode(noisy_rgb(32, 32), "PNG")
    p = write(tmp_path, "big.png", data)
    with pytest.raises(MediaError) as ei:
        inspect_image(p, max_bytes=len(data) - 1)
    assert ei.value.reason == "file_too_large"
    assert str(len(data)) in ei.value.detail
    assert inspect_image(p, max_bytes=len(data)).n_bytes == len(data)  # exactly at the limit is fine
    assert reason_of(load_image_rgb, p, max_bytes=100) == "file_too_large"


def test_corrupt_png_data(tmp_path: Path) -> None:
    # complete file (IHDR..IEND, valid CRCs) whose IDAT is not a zlib stream
    p = write(tmp_path, "c.png", crafted_png(4, 4, idat=b"definitely not zlib data"))
    assert reason_of(inspect_image, p) in ("corrupt_image", "truncated_image")


@pytest.mark.parametrize(
    ("w", "h"), [(100_000, 100_000), (40_000_001, 1), (1, 2**31 - 1), (2**31 - 1, 2**31 - 1)]
)
def test_decompression_bomb_png_header(tmp_path: Path, w: int, h: int, no_warnings) -> None:
    data = crafted_png(w, h)
    assert len(data) < 100  # tiny on disk
    p = write(tmp_path, "bomb.png", data)
    with pytest.raises(MediaError) as ei:
        inspect_image(p)
    assert ei.value.reason == "decompression_bomb"
    assert "header declares" in ei.value.detail  # rejected by the sniffer, before PIL decodes anything
    assert reason_of(load_image_rgb, p) == "decompression_bomb"


def test_decompression_bomb_gif_and_bmp_headers(tmp_path: Path) -> None:
    gif = (
        b"GIF89a"
        + struct.pack("<HH", 65535, 65535)
        + b"\x00\x00\x00"
        + b"\x2c"
        + b"\x00" * 9
        + b"\x02\x02D\x01\x00;"
    )
    assert reason_of(inspect_image, write(tmp_path, "b.gif", gif), max_pixels=10_000) == "decompression_bomb"
    bmp = bytearray(encode(noisy_rgb(2, 2), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50_000, 50_000)
    assert reason_of(inspect_image, write(tmp_path, "b.bmp", bytes(bmp))) == "decompression_bomb"


def test_max_pixels_below_real_image(tmp_path: Path, no_warnings) -> None:
    p = write(tmp_path, "r.jpg", encode(noisy_rgb(40, 30), "JPEG"))
    assert reason_of(inspect_image, p, max_pixels=40 * 30 - 1) == "decompression_bomb"
    assert inspect_image(p, max_pixels=40 * 30).width == 40  # exactly at the limit is fine
    assert reason_of(load_image_rgb, p, max_pixels=100) == "decompression_bomb"


def test_pil_global_limit_untouched(tmp_path: Path, no_warnings) -> None:
    before = Image.MAX_IMAGE_PIXELS
    inspect_image(write(tmp_path, "a.png", encode(noisy_rgb(8, 8), "PNG")))
    with pytest.raises(MediaError):
        inspect_image(write(tmp_path, "b.png", crafted_png(100_000, 100_000)))
    assert Image.MAX_IMAGE_PIXELS == before


def test_raised_limit_between_pil_warning_and_error_thresholds_no_warning(tmp_path: Path, no_warnings) -> None:
    # 9000x9000 = 8.1e7 pixels: under PIL's MAX_IMAGE_PIXELS (the cap); the caller's max_pixels allows it,
    # so the failure must come from the (missing) pixel data, without a warning.
    p = write(tmp_path, "big.png", crafted_png(9_000, 9_000))
    assert reason_of(inspect_image, p, max_pixels=200_000_000) in ("truncated_image", "corrupt_image")


def test_max_pixels_is_capped_at_pils_own_limit(tmp_path: Path, no_warnings) -> None:
    """A caller's limit above PIL's MAX_IMAGE_PIXELS is capped there (documented): PIL never warns or
    refuses on its own, and no global state is changed."""
    p = write(tmp_path, "big.png", crafted_png(15_000, 12_000))  # 1.8e8 pixels > PIL's ~8.9e7
    assert reason_of(inspect_image, p, max_pixels=500_000_000) == "decompression_bomb"


# --------------------------------------------------------------------------------------------------
# load_image_rgb
# --------------------------------------------------------------------------------------------------


def test_load_rgb_from_palette(tmp_path: Path, no_warnings) -> None:
    im = noisy_rgb(16, 12).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    p = write(tmp_path, "p.png", encode(im, "PNG"))
    out = load_image_rgb(p)
    assert out.mode == "RGB" and out.size == (16, 12)
    assert out.getpixel((0, 0)) == im.convert("RGB").getpixel((0, 0))


def test_load_rgb_from_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    p = write(tmp_path, "pt.png", encode(im, "PNG", transparency=0))
    out = load_image_rgb(p)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black -> white background
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_load_rgb_from_rgba_composites_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    im.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    p = write(tmp_path, "a.png", encode(im, "PNG"))
    out = load_image_rgb(p)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    r, g, b = out.getpixel((2, 0))
    assert 120 <= r <= 135 and r == g == b


def test_load_rgb_from_la_and_greyscale(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 2), (0, 0))
    out = load_image_rgb(write(tmp_path, "la.png", encode(la, "PNG")))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (5, 4), 77)
    out = load_image_rgb(write(tmp_path, "l.png", encode(grey, "PNG")))
    assert out.mode == "RGB" and out.size == (5, 4) and out.getpixel((2, 2)) == (77, 77, 77)
    out = load_image_rgb(write(tmp_path, "l.jpg", encode(grey, "JPEG", quality=100)))
    assert out.mode == "RGB" and out.size == (5, 4)


def test_load_rgb_one_bit_and_gif(tmp_path: Path) -> None:
    one = Image.new("1", (6, 3), 1)
    out = load_image_rgb(write(tmp_path, "1.bmp", encode(one, "BMP")))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    out = load_image_rgb(write(tmp_path, "g.gif", encode(noisy_rgb(9, 7), "GIF")))
    assert out.mode == "RGB" and out.size == (9, 7)


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    im = noisy_rgb(20, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = write(tmp_path, "o.jpg", encode(im, "JPEG", exif=exif.tobytes()))
    assert inspect_image(p).width == 20  # inspect reports stored size
    assert load_image_rgb(p).size == (10, 20)


def test_load_rgb_errors_match_inspect(tmp_path: Path) -> None:
    data = encode(noisy_rgb(32, 32), "PNG")
    assert reason_of(load_image_rgb, write(tmp_path, "t.png", data[: len(data) // 2])) == "truncated_image"
    assert reason_of(load_image_rgb, write(tmp_path, "x.png", b"plain text")) == "unreadable_image"
    assert reason_of(load_image_rgb, tmp_path / "missing.png") == "missing_file"


def test_load_rgb_returns_independent_image(tmp_path: Path) -> None:
    p = write(tmp_path, "a.png", encode(noisy_rgb(8, 8), "PNG"))
    out = load_image_rgb(p)
    p.unlink()  # data is fully loaded in memory
    assert np.asarray(out).shape == (8, 8, 3)


# --------------------------------------------------------------------------------------------------
# inspect_audio (libsndfile header check; decoding is tested in test_audio.py)
# --------------------------------------------------------------------------------------------------


def test_inspect_audio_wav_and_other_formats(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    with wave.open(str(p), "wb") as wf:
        wf.setnchannels(2)
        wf.setsampwidth(2)
        wf.setframerate(16000)
        wf.writeframes(b"\x01\x00\xff\xff" * 8000)
    info = inspect_audio(p)
    assert (info.format, info.sample_rate) == ("wav", 16000)
    assert info.duration_s == pytest.approx(0.5)
    assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and info.n_bytes == p.stat().st_size
    import soundfile as sf

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    formats = [("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")]
    for fmt, subtype, ext in formats:
        q = tmp_path / f"t.{ext.upper()}"
        sf.write(str(q), tone, 8000, format=fmt, subtype=subtype)
        info = inspect_audio(q)
        assert (info.format, info.sample_rate) == (ext, 8000)
        assert info.duration_s == pytest.approx(1.0, abs=0.05)
    # the format comes from the content, not the file name
    renamed = tmp_path / "really_wav.mp3"
    renamed.write_bytes(p.read_bytes())
    assert inspect_audio(renamed).format == "wav"


def test_inspect_audio_errors(tmp_path: Path) -> None:
    assert reason_of(inspect_audio, write(tmp_path, "bad.wav", b"not a wav at all")) == "unreadable_audio"
    # opaque bytes are no longer accepted on their extension alone
    assert reason_of(inspect_audio, write(tmp_path, "b.MP3", b"ID3\x03\x00fake")) == "unreadable_audio"
    assert reason_of(inspect_audio, write(tmp_path, "noext", b"xx")) == "unreadable_audio"
    assert reason_of(inspect_audio, write(tmp_path, "e.wav", b"")) == "empty_file"
    assert reason_of(inspect_audio, write(tmp_path, "big.ogg", b"x" * 11), max_bytes=10) == "file_too_large"
    assert reason_of(inspect_audio, tmp_path / "missing.wav") == "missing_file"
    assert reason_of(inspect_audio, tmp_path) == "not_a_file"
    with wave.open(str(tmp_path / "long.wav"), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(8000)
        wf.writeframes(b"\x01\x00" * 16000)
    assert reason_of(inspect_audio, tmp_path / "long.wav", max_seconds=1.5) == "audio_too_long"
    data = (tmp_path / "long.wav").read_bytes()
    assert reason_of(inspect_audio, write(tmp_path, "cut.wav", data[: len(data) // 2])) == "unreadable_audio"


# --------------------------------------------------------------------------------------------------
# normalize_text / text_sha256
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("e\u0301", "\u00e9"),  # NFC composition
        ("Cafe\u0301 cre\u0300me", "Café crème"),
        ("  hello  ", "hello"),
        ("\n\thello world\t\n", "hello world"),
        ("a\r\nb\rc\nd", "a\nb\nc\nd"),
        ("\ufeffhello\u200b", "hello"),  # BOM / zero-width stripped at the ends
        ("\u200c\u200d\u2060x\u2060", "x"),
        ("in\u200bside", "in\u200bside"),  # only the ends are stripped
        ("\u00a0nbsp\u3000", "nbsp"),  # unicode whitespace
        ("Ω", "Ω"),  # NFC maps OHM SIGN to GREEK OMEGA
        ("😀", "😀"),
        ("x", "x"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty_text"),
        ("   ", "empty_text"),
        ("\n\t\r\n", "empty_text"),
        ("\ufeff\u200b \u2060", "empty_text"),
        ("\ud800", "invalid_text"),
        ("ok\udfffok", "invalid_text"),
        ("a\x00b", "invalid_text"),
        ("\x00", "invalid_text"),
        (None, "invalid_text"),
        (42, "invalid_text"),
        (b"bytes", "invalid_text"),
        (["a"], "invalid_text"),
    ],
)
def test_normalize_text_errors(raw: object, reason: str) -> None:
    assert reason_of(normalize_text, raw) == reason


def test_normalize_text_surrogate_detail() -> None:
    with pytest.raises(MediaError) as ei:
        normalize_text("ab\ud800")
    assert "position 2" in ei.value.detail


def test_normalize_text_max_chars() -> None:
    assert normalize_text("x" * DEFAULT_MAX_TEXT_CHARS) == "x" * DEFAULT_MAX_TEXT_CHARS
    assert reason_of(normalize_text, "x" * (DEFAULT_MAX_TEXT_CHARS + 1)) == "text_too_long"
    assert normalize_text("abcde", max_chars=5) == "abcde"
    assert reason_of(normalize_text, "abcdef", max_chars=5) == "text_too_long"
    # length is measured after stripping and NFC composition
    assert normalize_text("  abcde  ", max_chars=5) == "abcde"
    assert normalize_text("e\u0301" * 5, max_chars=5) == "\u00e9" * 5


def test_normalize_text_idempotent() -> None:
    for s in ["  Cafe\u0301\r\n ", "\ufeffx\u200b", "plain"]:
        once = normalize_text(s)
        assert normalize_text(once) == once


def test_text_sha256() -> None:
    assert text_sha256("hello") == hashlib.sha256(b"hello").hexdigest()
    assert text_sha256("été") == hashlib.sha256("été".encode()).hexdigest()
    assert text_sha256("a") == text_sha256("a")
    assert text_sha256("a") != text_sha256("b")
    # equal after normalisation -> equal hashes
    assert text_sha256(normalize_text("e\u0301 ")) == text_sha256(normalize_text("\u00e9"))
    assert len(text_sha256("")) == 64


def test_bytes_sha256() -> None:
    assert bytes_sha256(b"") == hashlib.sha256(b"").hexdigest()
    assert bytes_sha256(b"\x00\xff") == hashlib.sha256(b"\x00\xff").hexdigest()


def test_module_exports() -> None:
    for name in media.__all__:
        assert hasattr(media, name), name
