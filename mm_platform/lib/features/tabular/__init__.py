"""Typed record fields and a fitted, versioned tabular encoder.

Records carry ``fields: {name: number | string | null}`` (validated JSON types, see
:mod:`mm_platform.lib.landing.manifest`). This module turns them into a fixed-size embedding block.

Fitting (:func:`fit_tabular`) infers one :class:`FieldSpec` per field name from the non-null values
(a blank string counts as null; booleans, which the manifest never lets through, are ignored):

* ``numeric`` when at least ``numeric_share`` of the values are numbers or numeric strings
  (``" 3.5"``, ``"1e3"``; not ``"nan"``/``"inf"``/``"1_000"``); ``mean``/``std`` (population) are taken
  over the values that parse, a zero or non-finite ``std`` becomes 1;
* ``empty`` when the field is always null (kept in the state, contributes no feature);
* ``identifier`` when a would-be categorical has more than ``max(50, 0.5 * n_non_null)`` distinct
  values *and* at least :data:`IDENTIFIER_DISTINCT_SHARE` of its values are distinct (serial
  numbers, free text, ids): one-hot encoding those would be noise, so they contribute no feature
  (but are still typed and stored);
* ``categorical`` otherwise, keeping the ``max_categories`` most frequent values (ties by name).

Raw features, per field in name order (see :attr:`TabularEncoderState.feature_names`):

* numeric ``f``: ``f`` = ``z = (x - mean) / std`` clipped to ``[-clip, clip]`` (0 when missing) and
  ``f:missing`` (1 when missing);
* categorical ``f``: one-hot ``f=<category>`` over the fitted categories, ``f:other`` for a value unseen
  at fit time (a new category in a later batch is encoded, not an error) and ``f:missing``.

Field balance: a categorical block is one-hot, so its squared norm is exactly 1 however many
categories it has; a numeric block is either ``(z, 0)`` whose squared norm ``z**2`` has expectation
``<= 1`` over the fit data (z is standardised, clipping only lowers it) or ``(0, 1)`` when missing.
So every field contributes a squared norm of about 1 to a row, whatever its kind or cardinality, and
no per-field weight is needed; ``clip`` bounds how much one outlying number can dominate (``clip**2``).
A row of all-missing fields is made of its missing indicators and is therefore a valid vector. The one
degenerate raw row -- every field numeric, present and *exactly* at its mean -- is all zeros and has no
direction; it is encoded as the uniform direction over its numeric value features (as if each sat a
hair above its mean) so that every row stays unit-norm.

Fixed output size :data:`TABULAR_DIM` (the fused layout must not depend on the data): with at most
``TABULAR_DIM`` raw features the vector is zero-padded, which preserves dot products and cosines
exactly; above, it is multiplied by a Gaussian random projection ``R`` (``raw_dim x TABULAR_DIM``,
entries ``N(0, 1/TABULAR_DIM)``) seeded from the state version. By Johnson-Lindenstrauss, norms and
cosines are then preserved only approximately (distortion ``~ O(1/sqrt(TABULAR_DIM))``). Rows are
L2-normalised last.

The state is versioned by content (:attr:`TabularEncoderState.version`), persisted as JSON
(:func:`save_state`/:func:`load_state`) and shared between processes with :func:`fit_or_load`.

Layout: :mod:`.numbers` (value parsing), :mod:`.spec` (field specs and the versioned state),
:mod:`.fit`, :mod:`.typed` (typing rows, typed frame), :mod:`.encode` and :mod:`.state` (state
files, locked fit-or-load); this package re-exports their public names.
"""

from __future__ import annotations

from mm_platform.lib.features.tabular.encode import (
    encode_raw,
    encode_tabular,
)
from mm_platform.lib.features.tabular.fit import (
    fit_tabular,
)
from mm_platform.lib.features.tabular.numbers import (
    format_number,
    parse_number,
)
from mm_platform.lib.features.tabular.spec import (
    CURRENT_NAME,
    FORMAT,
    FORMAT_VERSION,
    IDENTIFIER_DISTINCT_SHARE,
    IDENTIFIER_MIN_DISTINCT,
    KINDS,
    LOCK_NAME,
    RESERVED_COLUMNS,
    STATE_PREFIX,
    TABULAR_DIM,
    FieldSpec,
    FieldValue,
    TabularEncoderState,
    TabularParams,
    TypedValue,
)
from mm_platform.lib.features.tabular.state import (
    fit_or_load,
    load_state,
    save_state,
    state_path,
)
from mm_platform.lib.features.tabular.typed import (
    FieldProblem,
    TypedRows,
    field_column_names,
    type_rows,
    typed_frame,
)

__all__ = [
    "CURRENT_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "FieldProblem",
    "FieldSpec",
    "FieldValue",
    "IDENTIFIER_DISTINCT_SHARE",
    "IDENTIFIER_MIN_DISTINCT",
    "KINDS",
    "LOCK_NAME",
    "RESERVED_COLUMNS",
    "STATE_PREFIX",
    "TABULAR_DIM",
    "TabularEncoderState",
    "TabularParams",
    "TypedRows",
    "TypedValue",
    "encode_raw",
    "encode_tabular",
    "field_column_names",
    "fit_or_load",
    "fit_tabular",
    "format_number",
    "load_state",
    "parse_number",
    "save_state",
    "state_path",
    "type_rows",
    "typed_frame",
]
