"""Cluster names: filler and corpus-frequent words removed, MMR keeps the picked terms apart."""

import numpy as np

from mm_platform.lib.analysis.clustering.names import cluster_names, corpus_frequent_words, mmr

FILLER = "new item adjust as needed, it matters"


def _corpus():
    return {
        0: [f"ceramic mug for breakfast coffee. {FILLER}", f"blue ceramic mug with handle. {FILLER}",
            "ceramic mug, dishwasher safe"],
        1: [f"wireless headphones with noise cancelling. {FILLER}", f"over-ear headphones, wireless. {FILLER}",
            "headphones for travel"],
        2: [f"trail running shoe with grip. {FILLER}", f"waterproof trail shoe. {FILLER}", "trail shoe, light"],
        3: [f"desk lamp with warm light. {FILLER}", f"led desk lamp, dimmable. {FILLER}", "desk lamp for reading"],
    }


def test_words_used_by_most_clusters_are_corpus_frequent():
    frequent = corpus_frequent_words(_corpus())
    assert {"new", "item", "adjust", "needed", "matters"} <= frequent
    assert not {"mug", "headphones", "trail", "lamp"} & frequent


def test_names_drop_filler_and_repeat_no_word():
    names = cluster_names(_corpus(), n_words=3)
    for c, want in ((0, "mug"), (1, "headphones"), (2, "trail"), (3, "lamp")):
        assert any(want in t for t in names[c]), names[c]
        assert not any(w in t.split() for t in names[c] for w in ("new", "adjust", "matters", "item")), names[c]
    # MMR: "ceramic mug" and "ceramic" / "mug" are not all picked together
    words = [w for t in names[0] for w in t.split()]
    assert len(words) == len(set(words)), names[0]


def test_mmr_trades_relevance_for_diversity():
    cands = ["red kangaroo", "kangaroo", "grass"]
    rel = np.array([1.0, 0.95, 0.6])
    sim = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], dtype=float)
    assert mmr(cands, rel, sim, 2, diversity=0.0) == ["red kangaroo", "kangaroo"]
    assert mmr(cands, rel, sim, 2, diversity=0.5) == ["red kangaroo", "grass"]


def test_an_embedding_function_ranks_terms_by_closeness_to_the_cluster_centre():
    def embed(texts):  # a real (tiny) embedder: character-trigram hashing
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, hash(t[j:j + 3]) % 64] += 1
        return out

    names = cluster_names(_corpus(), n_words=2, embed=embed)
    assert set(names) == {0, 1, 2, 3} and all(len(v) == 2 for v in names.values())
    assert not any("matters" in t for v in names.values() for t in v)

    def broken(texts):
        raise ValueError("encoder down")

    assert cluster_names(_corpus(), n_words=2, embed=broken) == cluster_names(_corpus(), n_words=2)
    assert cluster_names({}) == {} and cluster_names({1: ["", " "]}) == {1: []}


def test_every_clusters_terms_go_to_the_encoder_in_one_call():
    """One round trip for all clusters' candidate terms (a warm Ray actor costs ~20 ms a call), plus one per
    cluster whose centre must be computed from its texts; the names are those of embedding term by term."""
    def embed(texts):
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, sum(map(ord, t[j:j + 3])) % 64] += 1
        return out

    calls = []

    def counted(texts):
        calls.append(list(texts))
        return embed(texts)

    def one_by_one(texts):
        return np.vstack([embed([t]) for t in texts]) if texts else np.zeros((0, 64))

    centres = {c: embed(texts).mean(axis=0) for c, texts in _corpus().items()}
    names = cluster_names(_corpus(), n_words=2, embed=counted, centres=centres)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) > 8
    assert names == cluster_names(_corpus(), n_words=2, embed=one_by_one, centres=centres)
    calls.clear()
    assert cluster_names(_corpus(), n_words=2, embed=counted) == cluster_names(_corpus(), n_words=2, embed=one_by_one)
    assert len(calls) == 1 + len(_corpus())
