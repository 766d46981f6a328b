-- One row per use case and key that was ever published: its label, its run dates and its newest
-- `published` status.
with published as (
    select
        use_case,
        key_id,
        run_date,
        key_label,
        status,
        row_number() over (partition by use_case, key_id order by run_date desc) as newest_first,
        min(run_date) over (partition by use_case, key_id) as first_run_date,
        cast(count(*) over (partition by use_case, key_id) as {{ dbt.type_bigint() }}) as n_run_dates,
        cast(sum(is_ok) over (partition by use_case, key_id) as {{ dbt.type_bigint() }})
            as n_run_dates_published
    from {{ ref('stg_key_status') }}
    where stage = 'published'
)

select
    use_case,
    key_id,
    key_label,
    first_run_date,
    run_date as last_run_date,
    status as last_published_status,
    n_run_dates,
    n_run_dates_published
from published
where newest_first = 1
