-- Staging: one row per cluster and clustering run (cluster_summary): its generated name, size,
-- representative records, c-TF-IDF top terms and label counts (JSON). Marts join it to stg_clusters
-- on (cluster_id, cluster_run_id), so only the summary of the run in use is picked up.

with source as (

    select * from cluster_summary

),

renamed as (

    select
        cluster_id,
        name as cluster_name,
        size as summary_size,
        coalesce(representative_record_ids, []::varchar[]) as representative_record_ids,
        coalesce(top_terms, []::varchar[]) as top_terms,
        label_counts_json,
        text_coverage,
        image_coverage,
        algorithm as cluster_algorithm,
        run_id as cluster_run_id

    from source

),

final as (

    select * from renamed

)

select * from final
