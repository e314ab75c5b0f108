-- Staging: one row per manifest line that parsed into a record (raw_records).
-- Light clean-up only: trimmed/lower-cased op, blank labels and paths turned into NULL, the record
-- timestamp renamed to record_timestamp, and presence flags derived for each declared modality.

with source as (

    select * from raw_records

),

renamed as (

    select
        batch_id,
        line_number,
        record_id,
        lower(trim(op)) as op,
        "timestamp" as record_timestamp,
        nullif(trim(label), '') as label,
        coalesce(text_declared, false) as text_declared,
        nullif(trim(image_path), '') as image_path,
        nullif(trim(audio_path), '') as audio_path,
        nullif(trim(fields_json), '') as fields_json,
        manifest_sha256,
        ingested_at

    from source

),

final as (

    select
        *,
        record_timestamp is not null as has_timestamp,
        label is not null as has_label,
        image_path is not null as declares_image,
        audio_path is not null as declares_audio,
        fields_json is not null and fields_json not in ('{}', 'null') as declares_tabular,
        op = 'delete' as is_delete

    from renamed

)

select * from final
