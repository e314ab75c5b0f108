"""The analysis stage: clustering (:mod:`.clustering`: k-means, density, outliers, descriptions, stability,
names), classifiers (:mod:`.classify`), modality weights and the fusion choice (:mod:`.modality_weights`,
:mod:`.fusion_choice`), the embedding map (:mod:`.embedding_map`, :mod:`.map_projection`) and chunked passes over
large corpora (:mod:`.global_chunks`)."""
