-- Staging: quarantined lines and modalities (rejected_records). One row per rejection; a manifest line
-- can be rejected for several modalities. modality is lower-cased, NULL or blank becomes 'record'
-- (the whole line was rejected).

with source as (

    select * from rejected_records

),

renamed as (

    select
        batch_id,
        line_number,
        nullif(trim(record_id), '') as record_id,
        coalesce(nullif(lower(trim(modality)), ''), 'record') as modality,
        reason,
        detail,
        stage,
        rejected_at

    from source

),

final as (

    select
        *,
        modality = 'record' as is_record_level

    from renamed

)

select * from final
