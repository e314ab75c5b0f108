"""Demo product fields (tabular): price, weight, rating, material, colour, warranty per price tier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mm_platform.demo.categories import P_FIELD_NULL, Category

_MATERIALS = ("ceramic", "plastic", "steel", "nylon", "leather", "aluminium")
_COLOURS = ("black", "white", "grey", "red", "blue", "green", "beige")


@dataclass(frozen=True)
class _Tier:
    price: float  # median price (EUR)
    weight_g: float  # median weight
    rating_p: tuple[float, ...]  # P(rating = 1..5)
    material_p: tuple[float, ...]  # P over _MATERIALS
    warranty_p: tuple[float, float]  # P(12), P(24); rest null


_TIERS = {
    "budget": _Tier(16.0, 320.0, (0.08, 0.12, 0.25, 0.35, 0.20), (0.35, 0.35, 0.10, 0.10, 0.05, 0.05), (0.75, 0.15)),
    "mid": _Tier(45.0, 850.0, (0.04, 0.08, 0.20, 0.38, 0.30), (0.10, 0.10, 0.30, 0.35, 0.10, 0.05), (0.55, 0.35)),
    "premium": _Tier(120.0, 1400.0, (0.02, 0.05, 0.13, 0.35, 0.45), (0.05, 0.10, 0.10, 0.10, 0.35, 0.30), (0.30, 0.60)),
}


def make_fields(cat: Category, rng: np.random.Generator) -> dict[str, float | int | str | None]:
    """Product fields for ``cat``: ``price``, ``weight_g``, ``rating``, ``material``, ``colour``,
    ``warranty_months``; each value is null with probability :data:`P_FIELD_NULL`."""
    tier = _TIERS[cat.tier]
    v = cat.tier_variant
    mat_p = np.asarray(tier.material_p)
    if v:  # tilt the material mix towards the next material
        mat_p = 0.7 * mat_p + 0.3 * np.roll(mat_p, 1)
    w = float(rng.random())
    warranty = 12 if w < tier.warranty_p[0] else (24 if w < sum(tier.warranty_p) else None)
    values: dict[str, float | int | str | None] = {
        "price": round(float(tier.price * (1.25 if v else 1.0) * rng.lognormal(0.0, 0.35)), 2),
        "weight_g": int(round(tier.weight_g * (0.85 if v else 1.0) * rng.lognormal(0.0, 0.3))),
        "rating": int(rng.choice(5, p=tier.rating_p)) + 1,
        "material": _MATERIALS[int(rng.choice(len(_MATERIALS), p=mat_p / mat_p.sum()))],
        "colour": _COLOURS[int(rng.integers(len(_COLOURS)))],
        "warranty_months": warranty,
    }
    nulls = rng.random(len(values)) < P_FIELD_NULL
    return {k: (None if null else val) for (k, val), null in zip(values.items(), nulls, strict=True)}
