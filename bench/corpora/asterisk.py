"""Asterisk core sounds (US English): spoken telephone prompts with their exact transcripts.

Sources: Debian packages ``asterisk-core-sounds-en-wav`` (the WAV prompts, ``usr/share/asterisk/sounds/
en_US_f_Allison/``) and ``asterisk-core-sounds-en`` (the transcripts, ``core-sounds-en.txt.gz``), 1.6.1;
CC-BY-SA 3.0, "Asterisk core sounds recorded by Allison Smith (http://www.theivrvoice.com), financial
contributions by Digium, Inc.".

One record per prompt with a transcript (an audio + text corpus, one speaker):

- label: the application the prompt belongs to: its sub-folder (digits, letters, phonetic, dictate) or
  the prefix of its name (vm = voicemail, confbridge, conf, spy, dir, queue, demo, …); labels with fewer
  than 8 prompts and the ``silence/`` clips are left out (about 450 records in 11 classes);
- text: the transcript (e.g. "Please enter your password followed by the pound key.");
- audio: the WAV prompt;
- fields (real, from the file): ``duration_s``.

    python -m bench.corpora.asterisk --out data/landing/asterisk [--limit 600]
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import soundfile as sf

from bench.corpora.common import Item, builder_main, drop_small_labels, fetch_deb, stratified_subsample, write_batch

AUDIO_PACKAGE = "asterisk-core-sounds-en-wav"
TEXT_PACKAGE = "asterisk-core-sounds-en"
SOUNDS = Path("usr/share/asterisk/sounds")
TRANSCRIPTS = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SKIP_FOLDERS = ("silence",)
MIN_CLASS = 8


def transcripts(path: Path) -> dict[str, str]:
    """``name: transcript`` lines (``;`` comments skipped) -> {name: transcript}; reads .gz or plain text."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    out = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        if name.strip() and text.strip():
            out[name.strip()] = text.strip()
    return out


def label_of(name: str) -> str:
    """``digits/5`` -> digits; ``vm-youhave`` -> vm; ``confbridge-join`` -> confbridge."""
    if "/" in name:
        return name.split("/", 1)[0]
    return re.split(r"[-_]", name, maxsplit=1)[0]


def voice_dir(root: Path) -> Path:
    """The folder holding the prompts (the one voice folder under ``usr/share/asterisk/sounds``)."""
    base = root / SOUNDS if (root / SOUNDS).is_dir() else root
    voices = [d for d in sorted(base.iterdir()) if d.is_dir() and any(d.glob("*.wav"))]
    return voices[0] if voices else base


def collect(voice: Path, texts: dict[str, str]) -> list[Item]:
    """One item per WAV prompt that has a transcript."""
    items = []
    for wav in sorted(voice.rglob("*.wav")):
        name = wav.relative_to(voice).with_suffix("").as_posix()
        if name not in texts or name.split("/")[0] in SKIP_FOLDERS:
            continue
        try:
            duration = round(sf.info(str(wav)).duration, 3)
        except (RuntimeError, sf.LibsndfileError):
            duration = None  # an unreadable file still lands: raw_audio quarantines it with a reason
        rid = "ast-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        items.append(Item(record_id=rid, label=label_of(name), text=texts[name], audio=wav,
                          fields={"duration_s": duration}))
    return items


def build(out: Path, limit: int | None = 600, source: Path | None = None, transcripts_file: Path | None = None,
          min_class: int = MIN_CLASS) -> dict:
    """Write the Asterisk prompts corpus as a landing batch at ``out``."""
    root = Path(source) if source is not None else fetch_deb(AUDIO_PACKAGE)
    if transcripts_file is None:
        text_root = root if source is not None else fetch_deb(TEXT_PACKAGE)
        transcripts_file = text_root / TRANSCRIPTS
    items = drop_small_labels(collect(voice_dir(root), transcripts(Path(transcripts_file))), min_class)
    summary = write_batch(out, stratified_subsample(items, limit))
    return {"corpus": "asterisk", "source": f"{AUDIO_PACKAGE} + {TEXT_PACKAGE}", **summary}


def _args(ap) -> None:
    ap.add_argument("--transcripts-file", type=Path, default=None,
                    help="core-sounds-en.txt(.gz) (with --source; fetched otherwise)")
    ap.add_argument("--min-class", type=int, default=MIN_CLASS, help="drop labels with fewer prompts")


if __name__ == "__main__":
    builder_main("asterisk", 600, build, _args)
