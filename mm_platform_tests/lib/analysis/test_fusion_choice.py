"""Fixed-layout fusion with evidence weights, the candidates, and the state file the batch job reads."""

import json

import numpy as np
import pytest

from mm_platform.lib.vectors.fusion import early_fusion
from mm_platform.lib.analysis.fusion_choice import (
    WEIGHTS_FILE,
    FusionChoice,
    candidate_weights,
    layout_matrix,
    load_choice,
    load_layout,
    save_choice,
    save_layout,
)
from mm_platform.lib.analysis.modality_weights import ModalityWeights


def _blocks():
    rng = np.random.default_rng(0)
    blocks = {"text": rng.normal(size=(4, 3)), "image": rng.normal(size=(4, 5))}
    present = {"text": np.array([True, True, False, True]), "image": np.array([True, False, True, False])}
    return blocks, present


def test_keep_layout_keeps_zero_weight_columns_and_falls_back_for_rows_without_a_weighted_modality():
    blocks, present = _blocks()
    res = early_fusion(blocks, present, {"text": 0.0, "image": 2.0}, keep_layout=True)
    assert res.vectors.shape == (4, 8) and res.modalities == ("text", "image") and res.dim == 8
    assert res.spec == "early:text=0,image=2"
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-6)  # nobody disappears
    assert res.fallback.tolist() == [False, True, False, True]  # rows 1 and 3 have text only
    assert not res.vectors[0, :3].any()  # row 0 has image: its text block is weighted 0
    assert res.row_weights(0) == {"image": 2.0} and res.row_weights(1) == {"text": 1.0}
    # without keep_layout the weight-0 modality is dropped (the configured behaviour) and text-only rows are empty
    dropped = early_fusion(blocks, present, {"text": 0.0, "image": 2.0})
    assert dropped.dim == 5 and dropped.fallback is None and not dropped.has_any[1]


def test_keep_layout_with_positive_weights_equals_plain_fusion():
    blocks, present = _blocks()
    w = {"text": 0.5, "image": 1.5}
    np.testing.assert_allclose(early_fusion(blocks, present, w, keep_layout=True).vectors,
                               early_fusion(blocks, present, w).vectors)


def test_layout_matrix_puts_missing_modalities_as_zero_blocks_at_their_place():
    blocks, present = _blocks()
    layout = {"text": 3, "image": 5, "audio": 2, "tabular": 4}
    X = layout_matrix(blocks, present, layout, {"text": 1.0, "image": 1.0})
    assert X.shape == (4, 14) and not X[:, 8:].any()
    plain = early_fusion(blocks, present, {"text": 1.0, "image": 1.0}).vectors
    np.testing.assert_allclose(X[:, :8], plain, atol=1e-6)


def test_candidates_cover_uniform_evidence_each_modality_and_text_image():
    ev = ModalityWeights({"text": 0.4, "image": 1.6, "audio": 0.0}, {}, {})
    c = candidate_weights(["audio", "image", "text"], ev, {"text": 1.0, "image": 1.0, "audio": 1.0})
    assert set(c) == {"early_uniform", "early_evidence", "single_text", "single_image", "single_audio", "text+image"}
    assert list(c["early_evidence"]) == ["text", "image", "audio"] and c["early_evidence"]["audio"] == 0.0
    assert c["single_image"] == {"text": 0.0, "image": 1.0, "audio": 0.0}


def test_state_files_round_trip_and_a_broken_one_is_ignored(tmp_path):
    assert load_choice(tmp_path) is None and load_layout(tmp_path) is None
    choice = FusionChoice({"text": 0.0, "image": 2.0}, "early_evidence", "r1", "why", ["text"], {"early_evidence": 0.5})
    save_choice(tmp_path, choice)
    back = load_choice(tmp_path)
    assert back == choice and back.source == "recluster:r1:early_evidence"
    save_layout(tmp_path, ["text", "image"], [3, 5])
    assert load_layout(tmp_path) == {"text": 3, "image": 5}
    for bad in ("{not json", json.dumps({"weights": {"text": -1}, "candidate": "x", "run_id": "r"}),
                json.dumps({"weights": {"text": 0}, "candidate": "x", "run_id": "r"})):
        (tmp_path / WEIGHTS_FILE).write_text(bad)
        assert load_choice(tmp_path) is None


@pytest.mark.parametrize("weights", [{"text": 0.0, "image": 0.0}])
def test_all_zero_weights_in_the_layout_fall_back_to_uniform(weights):
    blocks, present = _blocks()
    X = layout_matrix(blocks, present, {"text": 3, "image": 5}, weights)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)
