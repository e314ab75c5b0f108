-- Staging: the current cluster of each current record (the current_clusters view: the latest of the full
-- re-cluster and the eager per-batch assignment). is_outlier is filled from cluster_id = -1 when missing.

with source as (

    select * from current_clusters

),

renamed as (

    select
        record_id,
        batch_id,
        cluster_id,
        algorithm as cluster_algorithm,
        distance_to_centroid,
        coalesce(is_outlier, cluster_id = -1) as is_outlier,
        run_id as cluster_run_id,
        clustered_at,
        source as assignment_source

    from source

),

final as (

    select * from renamed

)

select * from final
