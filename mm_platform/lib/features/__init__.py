"""The features stage: sensor streams aligned to records in time (:mod:`.streams`) and the tabular field
encoder (:mod:`.tabular`)."""
