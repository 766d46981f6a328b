-- Every promotion decision in order, per key: promoted, kept_champion, rejected, and manual
-- rollbacks (rolled_back), with the production version before and after.
with decisions as (
    select
        ph.use_case,
        ph.key_id,
        k.key_label,
        ph.run_date,
        ph.decided_at,
        ph.decision,
        ph.is_rollback,
        ph.reason,
        ph.metric_name,
        {{ mmp_higher_is_better('ph.metric_name') }} as higher_is_better,
        ph.candidate_version,
        ph.candidate_value,
        ph.champion_version,
        ph.champion_value,
        ph.production_version,
        ph.decided_by,
        ph.dagster_run_id,
        cast(row_number() over (
            partition by ph.use_case, ph.key_id order by ph.decided_at, ph.dagster_run_id
        ) as {{ dbt.type_bigint() }}) as decision_number,
        lag(ph.production_version) over (
            partition by ph.use_case, ph.key_id order by ph.decided_at, ph.dagster_run_id
        ) as previous_production_version
    from {{ ref('stg_promotion_history') }} as ph
    left join {{ ref('dim_keys') }} as k
        on k.use_case = ph.use_case
        and k.key_id = ph.key_id
)

select
    use_case,
    key_id,
    key_label,
    run_date,
    decided_at,
    decision_number,
    decision,
    is_rollback,
    reason,
    metric_name,
    higher_is_better,
    candidate_version,
    candidate_value,
    champion_version,
    champion_value,
    candidate_value - champion_value as candidate_minus_champion,
    previous_production_version,
    production_version,
    case
        when production_version is null then 0
        when previous_production_version is null then 1
        when production_version <> previous_production_version then 1
        else 0
    end as production_changed,
    decided_by,
    dagster_run_id
from decisions
