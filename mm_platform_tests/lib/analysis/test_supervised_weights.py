"""The supervised fusion candidate: weights from each modality's own label NMI, fused and clustered."""

import numpy as np
import pytest

from mm_platform.lib.analysis.clustering.stability import fit_projection
from mm_platform.lib.analysis.clustering import kmeans_auto
from mm_platform.lib.vectors.corpus import Corpus
from mm_platform.lib.vectors.fusion import l2_normalize
from mm_platform.lib.analysis.modality_weights import evidence_weights
from mm_platform.lib.analysis.supervised_weights import label_weights, single_modality_nmi, supervised_evidence


def test_weights_follow_the_square_of_each_modalitys_label_nmi_over_its_cosine_spread():
    w = label_weights(["text", "image", "audio"], {"text": 0.6, "image": 0.3, "audio": 0.0},
                      {"text": 0.1, "image": 0.1, "audio": 0.2})
    assert w["audio"] == 0.0 and w["text"] == pytest.approx(4 * w["image"], rel=1e-3)
    assert w["text"] + w["image"] == pytest.approx(2.0, abs=1e-3)  # mean 1 over the non-zero weights
    # a wider cosine spread needs a smaller weight to count the same
    w2 = label_weights(["text", "image"], {"text": 0.5, "image": 0.5}, {"text": 0.1, "image": 0.4})
    assert w2["text"] == pytest.approx(4 * w2["image"], rel=1e-3)
    # fewer than two modalities with a measured NMI: no candidate (a single modality is its own candidate)
    assert label_weights(["text", "image"], {"text": 0.5}, {"text": 0.1, "image": 0.1}) is None


def test_single_nmi_uses_the_labelled_records_each_modality_covers():
    y = np.repeat(np.arange(3), 20)
    labels = [str(v) for v in y]
    parts = {"single_text": y.copy(), "single_audio": np.where(np.arange(60) < 30, y, -1),
             "single_image": np.zeros(60, dtype=np.int64), "early_uniform": y.copy()}
    out = single_modality_nmi(parts, labels)
    assert out["text"] == pytest.approx(1.0) and out["audio"] == pytest.approx(1.0)  # perfect where it exists
    assert out["image"] == pytest.approx(0.0) and "early_uniform" not in out
    assert single_modality_nmi(parts, [None] * 60) == {}  # no labels, nothing measured
    assert single_modality_nmi({"single_audio": parts["single_audio"]}, labels, min_labelled=40) == {}


def _corpus(seed: int = 0, n: int = 120) -> tuple[Corpus, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    blocks = {"text": l2_normalize(rng.normal(size=(4, 16))[y] * 2 + rng.normal(size=(n, 16))),
              "image": l2_normalize(rng.normal(size=(4, 24))[y] + rng.normal(size=(n, 24)) * 1.5),
              "tabular": l2_normalize(rng.normal(size=(n, 6)))}
    present = {m: np.ones(n, dtype=bool) for m in blocks}
    ids = [f"r{i:03d}" for i in range(n)]
    return Corpus(ids, ["b"] * n, [str(v) for v in y], blocks, present), y


def _cluster(X):
    mean, comps, Z = fit_projection(X, 6, seed=0)
    return kmeans_auto(Z, k_max=6, seed=0)


def test_supervised_evidence_drops_the_noise_modality_and_clusters_the_labels_at_least_as_well_as_uniform():
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from mm_platform.lib.analysis.fusion_choice import layout_matrix

    corpus, y = _corpus()
    layout = {"text": 16, "image": 24, "tabular": 6}
    fitted = {m: (corpus.record_ids, _cluster(corpus.blocks[m])) for m in corpus.modalities()}
    fitted["fused:early"] = (corpus.record_ids, _cluster(corpus.blocks["text"]))  # not a modality: ignored
    ev = evidence_weights(corpus.blocks)
    sup = supervised_evidence(corpus, fitted, ev.cosine_sd, layout)
    expected = label_weights(corpus.modalities(), sup.single_nmi, ev.cosine_sd)
    assert sup is not None and sup.weights == pytest.approx(expected, abs=2e-3)
    assert set(sup.single_nmi) == {"text", "image", "tabular"} and "NMI text" in sup.note()
    assert min(sup.weights["text"], sup.weights["image"]) > 10 * sup.weights["tabular"]
    assert sup.ids == corpus.record_ids and sup.X.shape == (corpus.n, 46)
    uniform = layout_matrix(corpus.blocks, corpus.present, layout, {m: 1.0 for m in layout})
    assert nmi(y, _cluster(sup.X).labels) >= nmi(y, _cluster(uniform).labels) - 1e-9
    unlabelled = Corpus(corpus.record_ids, corpus.batch_ids, [None] * corpus.n, corpus.blocks, corpus.present)
    assert supervised_evidence(unlabelled, fitted, ev.cosine_sd, layout) is None
