-- Staging: one row per decoded image (raw_images), with the content hash renamed to image_sha256 and
-- derived geometry: megapixels, aspect ratio (width / height) and orientation.

with source as (

    select * from raw_images

),

renamed as (

    select
        record_id,
        batch_id,
        line_number,
        image_path,
        uri,
        sha256 as image_sha256,
        width,
        height,
        upper(format) as image_format,
        mode as color_mode,
        n_bytes

    from source

),

final as (

    select
        *,
        width::double * height::double / 1000000.0 as megapixels,
        width::double / nullif(height, 0) as aspect_ratio,
        case
            when width is null or height is null then null
            when width > height then 'landscape'
            when width < height then 'portrait'
            else 'square'
        end as orientation

    from renamed

)

select * from final
