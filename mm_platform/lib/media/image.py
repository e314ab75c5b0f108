"""Image validation: header sniffing, inspection and safe decoding.

Everything here turns bad input into a :class:`MediaError` carrying a stable snake_case ``reason``
code and a specific human-readable ``detail``; nothing here lets an exception from PIL, the OS or
the codec layer escape untranslated.

Image safety:

* The pixel count is read from the file header by a small built-in sniffer (PNG, JPEG, GIF, BMP,
  WebP) and checked against ``max_pixels`` *before* PIL is involved, so oversized images are
  rejected as ``decompression_bomb`` without touching ``PIL.Image.MAX_IMAGE_PIXELS`` or the
  process-wide ``warnings`` filters (both are global state shared with other threads).
* Only those formats are accepted (``ALLOWED_IMAGE_FORMATS``); PIL is told to try exactly the
  sniffed format, so no other plugin can claim the bytes.
* The image is fully decoded (``Image.load()``) to catch truncation and corrupt data.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from mm_platform.lib.media.errors import MediaError, check_file
from mm_platform.lib.media.paths import bytes_sha256

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20

#: Formats accepted by :func:`inspect_image` (PIL format names).
ALLOWED_IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP")

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


# --------------------------------------------------------------------------------------------------
# Header sniffing (image dimensions without decoding)
# --------------------------------------------------------------------------------------------------


class _Truncated(Exception):
    pass


def _need(data: bytes, end: int) -> None:
    if len(data) < end:
        raise _Truncated()


def _sniff_png(data: bytes) -> tuple[int, int]:
    _need(data, 24)
    if data[12:16] != b"IHDR":
        raise ValueError("first PNG chunk is not IHDR")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _sniff_gif(data: bytes) -> tuple[int, int]:
    _need(data, 10)
    w, h = struct.unpack("<HH", data[6:10])
    return w, h


def _sniff_bmp(data: bytes) -> tuple[int, int]:
    _need(data, 18)
    (hdr,) = struct.unpack("<I", data[14:18])
    if hdr == 12:
        _need(data, 22)
        w, h = struct.unpack("<HH", data[18:22])
        return w, h
    if hdr < 16:
        raise ValueError(f"unsupported BMP header size {hdr}")
    _need(data, 26)
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _sniff_webp(data: bytes) -> tuple[int, int]:
    _need(data, 16)
    kind = data[12:16]
    if kind == b"VP8 ":
        _need(data, 30)
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 start code")
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        _need(data, 25)
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        _need(data, 30)
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    raise ValueError(f"unknown WebP chunk {kind!r}")


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _sniff_jpeg(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while True:
        # find next marker
        while i < n and data[i] != 0xFF:
            i += 1
        while i < n and data[i] == 0xFF:
            i += 1
        _need(data, i + 1)
        marker = data[i]
        i += 1
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9 or marker == 0xDA:
            raise ValueError("no SOF marker before image data")
        _need(data, i + 2)
        (seglen,) = struct.unpack(">H", data[i : i + 2])
        if seglen < 2:
            raise ValueError("bad JPEG segment length")
        if marker in _SOF_MARKERS:
            _need(data, i + 7)
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            if h == 0 or w == 0:
                raise ValueError("JPEG frame header has zero dimension (DNL not supported)")
            return w, h
        i += seglen


def sniff_image_header(data: bytes) -> tuple[str, int, int]:
    """Identify the format and dimensions of an encoded image from its header bytes only.

    Returns ``(pil_format, width, height)``. Raises ``MediaError``: ``unreadable_image`` (unknown
    signature or malformed header) or ``truncated_image`` (the header itself is cut off).
    """
    if data.startswith(_PNG_SIG):
        fmt, fn = "PNG", _sniff_png
    elif data.startswith(b"\xff\xd8\xff"):
        fmt, fn = "JPEG", _sniff_jpeg
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        fmt, fn = "GIF", _sniff_gif
    elif data.startswith(b"BM") and len(data) >= 14:
        fmt, fn = "BMP", _sniff_bmp
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, fn = "WEBP", _sniff_webp
    else:
        head = data[:8].hex()
        raise MediaError(
            "unreadable_image",
            f"not a supported image (accepted: {', '.join(ALLOWED_IMAGE_FORMATS)}); first bytes {head}",
        )
    try:
        w, h = fn(data)
    except _Truncated:
        raise MediaError("truncated_image", f"{fmt} header is cut off ({len(data)} bytes)") from None
    except (ValueError, struct.error) as exc:
        raise MediaError("unreadable_image", f"malformed {fmt} header: {exc}") from None
    if w <= 0 or h <= 0:
        raise MediaError("unreadable_image", f"{fmt} header has invalid size {w}x{h}")
    return fmt, w, h


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """Facts about a fully decoded, valid image file."""

    path: str
    sha256: str
    width: int
    height: int
    format: str
    mode: str
    n_bytes: int


def _read_limited(path: Path, max_bytes: int, kind: str) -> bytes:
    check_file(path, max_bytes, kind)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise MediaError("missing_file", f"cannot read {str(path)!r}: {exc}") from None
    if not data:
        raise MediaError("empty_file", f"{kind} file {str(path)!r} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise MediaError("file_too_large", f"{kind} file {str(path)!r} grew beyond limit {max_bytes} bytes")
    return data


_TRUNCATION_HINTS = ("truncated", "broken data stream", "premature", "end of file", "unexpected end")


def _looks_truncated(exc: Exception) -> bool:
    return isinstance(exc, EOFError) or any(h in str(exc).lower() for h in _TRUNCATION_HINTS)


def _container_truncated(fmt: str, data: bytes) -> str | None:
    """Why the file's own framing says it is cut off (None when it looks complete)."""
    if fmt == "PNG" and data.rfind(_PNG_IEND) < 0:
        return f"PNG has no IEND chunk ({len(data)} bytes)"
    if fmt == "WEBP" and len(data) >= 8 and struct.unpack("<I", data[4:8])[0] + 8 > len(data):
        return f"RIFF header declares {struct.unpack('<I', data[4:8])[0] + 8} bytes, file has {len(data)}"
    if fmt == "BMP" and len(data) >= 6 and struct.unpack("<I", data[2:6])[0] > len(data):
        return f"BMP header declares {struct.unpack('<I', data[2:6])[0]} bytes, file has {len(data)}"
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < 0:
        return f"JPEG has no end-of-image marker ({len(data)} bytes)"
    return None


def _decode(data: bytes, label: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Header checks, then PIL open + full decode. Returns (loaded image, format).

    ``max_pixels`` is capped at PIL's own limit (``Image.MAX_IMAGE_PIXELS``, about 89 MP) so PIL never
    warns or refuses on its own and no global state is touched."""
    max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    fmt, w, h = sniff_image_header(data)
    if w * h > max_pixels:
        raise MediaError(
            "decompression_bomb", f"{label}: header declares {w}x{h} = {w * h} pixels > limit {max_pixels}"
        )
    cut = _container_truncated(fmt, data)
    if cut:
        raise MediaError("truncated_image", f"{label}: {cut}, file is cut off")
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise MediaError("decompression_bomb", f"{label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad input
        if _looks_truncated(exc):
            raise MediaError("truncated_image", f"{label}: {fmt} data is incomplete: {exc}") from None
        raise MediaError("unreadable_image", f"{label}: cannot open as {fmt}: {type(exc).__name__}: {exc}") from None
    iw, ih = im.size
    if iw * ih > max_pixels:
        raise MediaError("decompression_bomb", f"{label}: image is {iw}x{ih} = {iw * ih} pixels > limit {max_pixels}")
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise MediaError("decompression_bomb", f"{label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        if _looks_truncated(exc):
            raise MediaError("truncated_image", f"{label}: {fmt} data is incomplete: {exc}") from None
        raise MediaError("corrupt_image", f"{label}: cannot decode {fmt} data: {type(exc).__name__}: {exc}") from None
    return im, fmt


def inspect_image(
    path: Path,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> ImageInfo:
    """Validate an image file by fully decoding it and return its :class:`ImageInfo`.

    Reasons raised (``MediaError``): ``missing_file``, ``not_a_file``, ``empty_file``,
    ``file_too_large`` (> ``max_bytes``), ``unreadable_image`` (not an image / unsupported format /
    malformed header), ``decompression_bomb`` (header size > ``max_pixels``, checked before any
    decoding), ``truncated_image`` (data cut off), ``corrupt_image`` (complete but undecodable).
    The SHA-256 is over the exact file bytes that were validated.
    """
    path = Path(path)
    data = _read_limited(path, max_bytes, "image")
    im, fmt = _decode(data, str(path), max_pixels)
    try:
        return ImageInfo(
            path=str(path),
            sha256=bytes_sha256(data),
            width=int(im.size[0]),
            height=int(im.size[1]),
            format=fmt,
            mode=str(im.mode),
            n_bytes=len(data),
        )
    finally:
        im.close()


def load_image_rgb(
    path: Path,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Image.Image:
    """Validate and decode an image into an in-memory RGB ``PIL.Image``.

    Same checks and reasons as :func:`inspect_image`. EXIF orientation is applied; transparent
    pixels are composited onto white (rather than dropping alpha, which would turn them black).
    """
    path = Path(path)
    data = _read_limited(path, max_bytes, "image")
    im, _fmt = _decode(data, str(path), max_pixels)
    try:
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - broken EXIF should not reject the pixels
            oriented = im
        if oriented.mode == "P" and "transparency" in oriented.info:
            oriented = oriented.convert("RGBA")
        if oriented.mode in ("RGBA", "LA", "PA") or (oriented.mode == "RGBa"):
            rgba = oriented.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out = Image.alpha_composite(bg, rgba).convert("RGB")
        else:
            out = oriented.convert("RGB")
        out.load()
        return out
    except Exception as exc:  # noqa: BLE001
        raise MediaError("corrupt_image", f"{path}: cannot convert to RGB: {type(exc).__name__}: {exc}") from None
    finally:
        im.close()
