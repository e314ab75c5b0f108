-- Intermediate: every aligned record (one row per record and batch) with its modality flags and its
-- cluster assignment from the latest clustering run. Records not clustered yet keep NULL cluster
-- columns and is_clustered = false.

with aligned as (

    select * from stg_aligned_records where is_current

),

clusters as (

    select * from stg_clusters

),

joined as (

    select
        aligned.record_id,
        aligned.batch_id,
        aligned.line_number,
        aligned.record_timestamp,
        aligned.label,
        aligned.has_label,
        aligned.has_text,
        aligned.has_image,
        aligned.has_audio,
        aligned.has_tabular,
        aligned.n_modalities,
        aligned.text_sha256,
        aligned.image_sha256,
        clusters.cluster_id,
        clusters.cluster_algorithm,
        clusters.distance_to_centroid,
        coalesce(clusters.is_outlier, false) as is_outlier,
        clusters.cluster_run_id,
        clusters.clustered_at,
        clusters.cluster_id is not null as is_clustered

    from aligned
    left join clusters
        on aligned.record_id = clusters.record_id
        and aligned.batch_id = clusters.batch_id

),

final as (

    select * from joined

)

select * from final
