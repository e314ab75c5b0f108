-- Staging: one row per aligned record version and batch (aligned_records_history), with is_current
-- (this version is the record's current one: latest landed batch, not deleted), NULL modality flags read
-- as false, the timestamp renamed to record_timestamp, and derived has_timestamp, has_label and
-- n_modalities (how many of text / image / audio / tabular the record carries).

with history as (

    select * from aligned_records_history

),

current_versions as (

    select record_id, batch_id from current_records

),

source as (

    select
        history.*,
        current_versions.record_id is not null as is_current
    from history
    left join current_versions
        on history.record_id = current_versions.record_id
        and history.batch_id = current_versions.batch_id

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
        image_sha256,
        is_current

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
