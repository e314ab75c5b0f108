"""Contrastive projection heads mapping frozen per-modality embeddings into one shared space.

The per-modality encoders (text, image, audio, tabular) are frozen and live in unrelated spaces of different
dimensions. Alignment learns one small head per modality,

    f_m(x) = normalize(h_m(normalize(x))),   h_m = Linear(d_m, D)  or  Linear(d_m, H) -> GELU -> Linear(H, D),

so that the two views of one record land close together: for records ``i`` (seen through modality ``a``) and
``j`` (seen through ``b``) the similarity is the cosine ``s_ij = <f_a(x_i^a), f_b(x_j^b)>``. Inputs are
L2-normalised first, so heads see every encoder on the same scale.

**Anchor modalities** (``AlignmentConfig.anchors``) already live in the target space, e.g. text and image in
the ``clip`` profile share CLIP's space. An anchor's head is ``f_m(x) = normalize(x)`` (no parameters, never
trained) and the shared space *is* the anchors' space: every anchor must have the same input dimension, which
becomes ``shared_dim``. Only the other heads train, pulled into the anchors' space by the anchor-other pairs;
anchor-anchor pairs have nothing to train and are left out of the loss (their retrieval is still reported).

**Loss** (CLIP's symmetric InfoNCE). For a mini-batch and a pair of modalities ``(a, b)`` let ``R`` be the rows
of the batch having both, ``Z_a, Z_b`` their ``(|R|, D)`` head outputs and ``L = Z_a Z_b^T / tau`` (``tau``
fixed). Row ``r``'s positive is column ``r``; every other row of ``R`` is a negative:

    loss_ab = 1/2 * [ CE(L, diag) + CE(L^T, diag) ],   CE = mean over rows of  -log softmax(L)_{r,r}.

The batch loss is the mean of ``loss_ab`` over the trainable pairs (not both anchors) with ``|R| >= 2``. Only
the heads are trained (AdamW, cosine learning-rate decay to 0). A random head already scores ``log |R|`` on
average; the loss falls as matching views become each other's nearest neighbours.

**Generalisation** (:mod:`mm_platform.lib.vectors.shared_space.train`): AdamW weight decay, dropout, a hidden width
scaled to the training rows (:func:`scaled_hidden_dim`: about 4 rows per hidden unit, a power of two in
[16, 512]) and early stopping on the validation loss (the best epoch's weights are kept).

**Linear baselines and gating** (:mod:`mm_platform.lib.vectors.shared_space.baseline`, ``.select``): a ridge
least-squares map and (generalised) CCA are fitted on the same training rows; :func:`fit_shared_space` returns
the heads only when their validation recall@10 beats the best baseline's, otherwise the baseline, stored as a
model with linear heads (``config.mapping`` says which), so search and the shared-space strategy use it alike.

**Evaluation** uses held-out rows only: for each ordered pair ``a->b`` the validation rows having both
modalities form queries (their ``a`` vectors) and the gallery (their ``b`` vectors); see
:func:`retrieval_recall` for the metric definitions.

**Reproducibility.** Heads are initialised under ``torch.manual_seed(seed)`` (inside ``fork_rng``: the
caller's RNG state is restored), batches come from a seeded NumPy generator, deterministic algorithms are on and
the thread count is fixed during training, so the same inputs, config and machine give bit-identical weights
and hence the same :attr:`AlignmentModel.version`.

Modules: projection heads (:mod:`.heads`, :mod:`.train`), linear baselines (:mod:`.baseline`), retrieval metrics
(:mod:`.recall`) and the choice between heads and baseline (:mod:`.select`); this package re-exports the public names.

Models are saved with ``safetensors`` (plain tensors named ``<modality>.<param>``, JSON metadata); loading never
unpickles anything and re-checks the version against the weights.
"""

from mm_platform.lib.vectors.shared_space.baseline import BASELINES, fit_baseline, ridge_map
from mm_platform.lib.vectors.shared_space.heads import (
    AUTO_HIDDEN,
    MAPPINGS,
    MODEL_FORMAT,
    RESERVED_METADATA,
    AlignmentConfig,
    AlignmentModel,
    _forward,
    _make_head,
)
from mm_platform.lib.vectors.shared_space.recall import RECALL_KS, retrieval_recall
from mm_platform.lib.vectors.shared_space.select import fit_shared_space
from mm_platform.lib.vectors.shared_space.train import (
    MAX_TRAIN_THREADS,
    Split,
    scaled_hidden_dim,
    split_rows,
    train_alignment,
    train_threads,
)

__all__ = [
    "AUTO_HIDDEN", "BASELINES", "MAPPINGS", "MAX_TRAIN_THREADS", "MODEL_FORMAT", "RECALL_KS", "RESERVED_METADATA",
    "AlignmentConfig", "AlignmentModel", "Split", "_forward", "_make_head", "fit_baseline", "fit_shared_space",
    "retrieval_recall", "ridge_map", "scaled_hidden_dim", "split_rows", "train_alignment", "train_threads",
]
