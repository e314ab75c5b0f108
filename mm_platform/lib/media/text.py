"""Text normalisation and validation."""

from __future__ import annotations

import unicodedata

from mm_platform.lib.media.errors import MediaError

DEFAULT_MAX_TEXT_CHARS = 100_000
# Characters stripped from the ends of texts in addition to ``str.strip()`` whitespace.
_EXTRA_STRIP = "\ufeff\u200b\u200c\u200d\u2060"


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def _strip_outer(s: str) -> str:
    lo, hi = 0, len(s)
    while lo < hi and (s[lo].isspace() or s[lo] in _EXTRA_STRIP):
        lo += 1
    while hi > lo and (s[hi - 1].isspace() or s[hi - 1] in _EXTRA_STRIP):
        hi -= 1
    return s[lo:hi]


def normalize_text(text: object, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> str:
    """Validate and normalise a text value.

    Steps: must be ``str`` encodable as UTF-8 (lone surrogates -> ``invalid_text``) without NUL
    (``invalid_text``); ``\\r\\n``/``\\r`` become ``\\n``; Unicode NFC; outer whitespace plus BOM and
    zero-width characters stripped. Empty result -> ``empty_text``; more than ``max_chars`` code
    points after normalisation -> ``text_too_long``.
    """
    if not isinstance(text, str):
        raise MediaError("invalid_text", f"text must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MediaError(
            "invalid_text", f"text contains a lone surrogate {text[exc.start]!r} at position {exc.start}"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise MediaError("invalid_text", f"text contains a NUL character at position {nul}")
    out = text.replace("\r\n", "\n").replace("\r", "\n")
    out = unicodedata.normalize("NFC", out)
    out = _strip_outer(out)
    if not out:
        raise MediaError("empty_text", f"text is empty or whitespace-only ({len(text)} chars before stripping)")
    if len(out) > max_chars:
        raise MediaError("text_too_long", f"text has {len(out)} characters > limit {max_chars}")
    return out
