-- Staging: one row per aligned record and batch (aligned_records), with NULL modality flags read as
-- false, the timestamp renamed to record_timestamp, and derived has_timestamp, has_label and
-- n_modalities (how many of text / image / audio / tabular the record carries).

with source as (

    select * from aligned_records

),

renamed as (

    select
        record_id,
        batch_id,
        line_number,
        "timestamp" as record_timestamp,
        nullif(trim(label), '') as label,
        coalesce(has_text, false) as has_text,
        coalesce(has_image, false) as has_image,
        coalesce(has_audio, false) as has_audio,
        coalesce(has_tabular, false) as has_tabular,
        text_sha256,
        image_sha256

    from source

),

final as (

    select
        *,
        record_timestamp is not null as has_timestamp,
        label is not null as has_label,
        has_text::int + has_image::int + has_audio::int + has_tabular::int as n_modalities

    from renamed

)

select * from final
