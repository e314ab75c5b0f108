"""The shared space: projection heads (:mod:`.heads`, :mod:`.train`), linear baselines (:mod:`.baseline`),
retrieval metrics (:mod:`.recall`) and the choice between heads and baseline (:mod:`.select`).
:mod:`mm_platform.lib.alignment` re-exports the public names and documents the maths."""
