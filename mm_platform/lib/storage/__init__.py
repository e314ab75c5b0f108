"""The storage stage: the Delta lake (:mod:`.lake`, :mod:`.delta`, table schemas :mod:`.tables`, the one-time
Parquet migration :mod:`.migrate`), the SQL models runner (:mod:`.sql_models`), safe SQL quoting (:mod:`.sqlquote`)
and the Qdrant sink (:mod:`.qdrant`). Imports only the foundation modules (settings, device, locks, arrays)."""
