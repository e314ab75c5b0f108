"""The vectors stage: fusion of per-modality vectors (:mod:`.fusion`), the current corpus of vectors read
from the lake (:mod:`.corpus`) and the learned shared space across modalities (:mod:`.shared_space`)."""
