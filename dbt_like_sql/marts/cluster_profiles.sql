-- Mart: one row per cluster of the latest clustering run (cluster_id -1 = HDBSCAN outliers, when any):
-- size, share of its records carrying text / image / audio / tabular data, mean distance to centroid,
-- the dominant ground-truth label with its purity (dominant count / labelled members), and the
-- cluster's name and top terms from the cluster summary of the same run.

with records as (

    select * from int_records_with_clusters
    where is_clustered

),

summary as (

    select * from stg_cluster_summary

),

sizes as (

    select
        cluster_id,
        cluster_run_id,
        any_value(cluster_algorithm) as cluster_algorithm,
        count(*) as n_records,
        avg(has_text::int)::double as text_share,
        avg(has_image::int)::double as image_share,
        avg(has_audio::int)::double as audio_share,
        avg(has_tabular::int)::double as tabular_share,
        avg(n_modalities)::double as mean_modalities,
        avg(distance_to_centroid)::double as mean_distance_to_centroid,
        count(*) filter (where has_label) as n_labelled

    from records
    group by cluster_id, cluster_run_id

),

label_counts as (

    select
        cluster_id,
        label,
        count(*) as n_label

    from records
    where has_label
    group by cluster_id, label

),

dominant as (

    select
        cluster_id,
        label as dominant_label,
        n_label as dominant_label_count

    from label_counts
    qualify row_number() over (partition by cluster_id order by n_label desc, label asc) = 1

),

final as (

    select
        sizes.cluster_id,
        summary.cluster_name,
        sizes.cluster_algorithm,
        sizes.cluster_id = -1 as is_outlier_group,
        sizes.n_records,
        sizes.text_share,
        sizes.image_share,
        sizes.audio_share,
        sizes.tabular_share,
        sizes.mean_modalities,
        sizes.mean_distance_to_centroid,
        sizes.n_labelled,
        dominant.dominant_label,
        coalesce(dominant.dominant_label_count, 0) as dominant_label_count,
        dominant.dominant_label_count::double / nullif(sizes.n_labelled, 0) as label_purity,
        coalesce(summary.top_terms, []::varchar[]) as top_terms,
        summary.representative_record_ids,
        sizes.cluster_run_id

    from sizes
    left join dominant on sizes.cluster_id = dominant.cluster_id
    left join summary
        on sizes.cluster_id = summary.cluster_id
        and sizes.cluster_run_id is not distinct from summary.cluster_run_id

)

select * from final
order by cluster_id
