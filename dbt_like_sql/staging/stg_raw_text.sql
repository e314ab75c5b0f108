-- Staging: the validated text of each record (raw_text), with word counts and an empty-text flag.

with source as (

    select * from raw_text

),

renamed as (

    select
        record_id,
        batch_id,
        line_number,
        text,
        text_sha256,
        n_chars

    from source

),

final as (

    select
        *,
        case
            when text is null or trim(text) = '' then 0
            else len(regexp_split_to_array(trim(text), '\s+'))
        end as n_words,
        text is null or trim(text) = '' as is_blank

    from renamed

)

select * from final
