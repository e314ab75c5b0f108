"""The landing stage: the manifest contract (:mod:`.manifest`) and the ledger of landed, pending and ingested
batches (:mod:`.ledger`: the one "pending batch" rule)."""
