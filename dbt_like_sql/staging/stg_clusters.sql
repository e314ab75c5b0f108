-- Staging: the cluster assignment of each fused record (clusters), restricted to the latest clustering
-- run (by clustered_at, then run_id) in case the table ever holds more than one. is_outlier is filled
-- from cluster_id = -1 when missing.

with source as (

    select * from clusters

),

latest_run as (

    select run_id
    from source
    order by clustered_at desc nulls last, run_id desc
    limit 1

),

renamed as (

    select
        source.record_id,
        source.batch_id,
        source.cluster_id,
        source.algorithm as cluster_algorithm,
        source.distance_to_centroid,
        coalesce(source.is_outlier, source.cluster_id = -1) as is_outlier,
        source.run_id as cluster_run_id,
        source.clustered_at

    from source
    inner join latest_run on source.run_id is not distinct from latest_run.run_id

),

final as (

    select * from renamed

)

select * from final
