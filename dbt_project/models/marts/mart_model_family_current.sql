-- The current model family of every key (the registry snapshot in model_family), with the key's
-- newest published status and its latest promotion decision.
with latest_decision as (
    select
        use_case,
        key_id,
        decision,
        decided_at,
        row_number() over (partition by use_case, key_id order by decided_at desc, dagster_run_id desc)
            as newest_first
    from {{ ref('stg_promotion_history') }}
)

select
    mf.use_case,
    mf.key_id,
    mf.key_label,
    mf.family_status,
    mf.metric_name,
    mf.higher_is_better,
    mf.candidate_version,
    mf.candidate_value,
    mf.production_version,
    mf.production_source_version,
    mf.production_value,
    mf.candidate_value - mf.production_value as candidate_minus_production,
    k.last_run_date,
    k.last_published_status,
    d.decision as latest_decision,
    d.decided_at as latest_decided_at,
    mf.snapshot_at
from {{ ref('stg_model_family') }} as mf
left join {{ ref('dim_keys') }} as k
    on k.use_case = mf.use_case
    and k.key_id = mf.key_id
left join latest_decision as d
    on d.use_case = mf.use_case
    and d.key_id = mf.key_id
    and d.newest_first = 1
