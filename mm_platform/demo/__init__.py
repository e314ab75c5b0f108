"""Synthetic demo corpus for the multimodal platform (see :mod:`mm_platform.demo.generator`)."""

from mm_platform.demo.generator import CATEGORIES, DemoBatch, make_demo_batch

__all__ = ["CATEGORIES", "DemoBatch", "make_demo_batch"]
