-- Mart: one row per landing batch: manifest lines seen (parsed records plus lines rejected before
-- parsing), aligned records, rejected lines (lines with at least one rejection), rejections by
-- modality (record = the whole line), and the rejection rate (rejected lines / manifest lines).

with records as (

    select * from stg_raw_records

),

aligned as (

    select * from stg_aligned_records

),

rejected as (

    select * from stg_rejected_records

),

manifest_lines as (

    select batch_id, line_number from records
    union
    select batch_id, line_number from rejected

),

batches as (

    select batch_id from manifest_lines
    union
    select batch_id from aligned

),

line_counts as (

    select
        batch_id,
        count(*) as n_manifest_lines

    from manifest_lines
    group by batch_id

),

record_counts as (

    select
        batch_id,
        count(*) as n_raw_records,
        count(distinct record_id) as n_distinct_records,
        any_value(manifest_sha256) as manifest_sha256,
        min(ingested_at) as first_ingested_at,
        max(ingested_at) as last_ingested_at

    from records
    group by batch_id

),

aligned_counts as (

    select
        batch_id,
        count(*) as n_aligned_records,
        count(*) filter (where has_text) as n_aligned_with_text,
        count(*) filter (where has_image) as n_aligned_with_image

    from aligned
    group by batch_id

),

rejection_counts as (

    select
        batch_id,
        count(distinct line_number) as n_rejected_lines,
        count(*) as n_rejections,
        count(*) filter (where modality = 'record') as n_rejected_record,
        count(*) filter (where modality = 'text') as n_rejected_text,
        count(*) filter (where modality = 'image') as n_rejected_image,
        count(*) filter (where modality = 'audio') as n_rejected_audio,
        count(*) filter (where modality = 'tabular') as n_rejected_tabular,
        count(*) filter (
            where modality not in ('record', 'text', 'image', 'audio', 'tabular')
        ) as n_rejected_other

    from rejected
    group by batch_id

),

final as (

    select
        batches.batch_id,
        record_counts.manifest_sha256,
        coalesce(line_counts.n_manifest_lines, 0) as n_manifest_lines,
        coalesce(record_counts.n_raw_records, 0) as n_raw_records,
        coalesce(record_counts.n_distinct_records, 0) as n_distinct_records,
        coalesce(aligned_counts.n_aligned_records, 0) as n_aligned_records,
        coalesce(aligned_counts.n_aligned_with_text, 0) as n_aligned_with_text,
        coalesce(aligned_counts.n_aligned_with_image, 0) as n_aligned_with_image,
        coalesce(rejection_counts.n_rejected_lines, 0) as n_rejected_lines,
        coalesce(rejection_counts.n_rejections, 0) as n_rejections,
        coalesce(rejection_counts.n_rejected_record, 0) as n_rejected_record,
        coalesce(rejection_counts.n_rejected_text, 0) as n_rejected_text,
        coalesce(rejection_counts.n_rejected_image, 0) as n_rejected_image,
        coalesce(rejection_counts.n_rejected_audio, 0) as n_rejected_audio,
        coalesce(rejection_counts.n_rejected_tabular, 0) as n_rejected_tabular,
        coalesce(rejection_counts.n_rejected_other, 0) as n_rejected_other,
        coalesce(rejection_counts.n_rejected_lines, 0)::double
            / nullif(line_counts.n_manifest_lines, 0) as rejection_rate,
        record_counts.first_ingested_at,
        record_counts.last_ingested_at

    from batches
    left join line_counts on batches.batch_id = line_counts.batch_id
    left join record_counts on batches.batch_id = record_counts.batch_id
    left join aligned_counts on batches.batch_id = aligned_counts.batch_id
    left join rejection_counts on batches.batch_id = rejection_counts.batch_id

)

select * from final
order by batch_id
