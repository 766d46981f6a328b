-- Keys that need attention, one row per use case, key and run date on which the key was
--   failing:   a pipeline stage was not ok (failed, skipped, missing) or nothing was published;
--              failing_stage is the first such stage in pipeline order, with its status and reason;
--   degrading: the candidate's holdout value of the use case's metric is worse than on the
--              key's previous run date with a value, by more than var('mmp_degradation_margin')
--              times the previous value's magnitude (the metric's direction decides "worse").
-- Use is_latest_run_date = 1 for the current picture.
with status as (
    select
        use_case,
        key_id,
        run_date,
        stage,
        stage_order,
        key_label,
        status,
        reason
    from {{ ref('stg_key_status') }}
),

published as (
    select
        use_case,
        key_id,
        run_date,
        key_label,
        status as published_status,
        case when run_date = max(run_date) over (partition by use_case, key_id) then 1 else 0 end
            as is_latest_run_date
    from status
    where stage = 'published'
),

not_ok as (
    select
        use_case,
        key_id,
        run_date,
        stage,
        status,
        reason,
        row_number() over (partition by use_case, key_id, run_date order by stage_order) as first_in_pipeline
    from status
    where stage <> 'published'
        and status <> 'ok'
),

primary_metric as (
    select distinct
        use_case,
        run_date,
        metric_name
    from {{ ref('stg_run_summary') }}
),

metric_values as (
    select
        m.use_case,
        m.key_id,
        m.run_date,
        m.metric_name,
        m.higher_is_better,
        m.metric_value,
        lag(m.metric_value) over (
            partition by m.use_case, m.key_id, m.metric_name order by m.run_date
        ) as previous_metric_value,
        lag(m.run_date) over (
            partition by m.use_case, m.key_id, m.metric_name order by m.run_date
        ) as previous_run_date
    from {{ ref('stg_key_metrics') }} as m
    inner join primary_metric as pm
        on pm.use_case = m.use_case
        and pm.run_date = m.run_date
        and pm.metric_name = m.metric_name
    where m.model_role = 'candidate'
        and m.metric_value is not null
),

flagged as (
    select
        p.use_case,
        p.key_id,
        p.key_label,
        p.run_date,
        p.is_latest_run_date,
        p.published_status,
        f.stage as failing_stage,
        f.status as failing_status,
        f.reason as failing_reason,
        m.metric_name,
        m.higher_is_better,
        m.metric_value,
        m.previous_run_date,
        m.previous_metric_value,
        m.metric_value - m.previous_metric_value as metric_change,
        case when f.stage is not null or p.published_status <> 'ok' then 1 else 0 end as is_failing,
        case
            when m.previous_metric_value is null then 0
            when m.higher_is_better = 1
                and m.previous_metric_value - m.metric_value
                > {{ var('mmp_degradation_margin') }} * abs(m.previous_metric_value) then 1
            when m.higher_is_better = 0
                and m.metric_value - m.previous_metric_value
                > {{ var('mmp_degradation_margin') }} * abs(m.previous_metric_value) then 1
            else 0
        end as is_degrading
    from published as p
    left join not_ok as f
        on f.use_case = p.use_case
        and f.key_id = p.key_id
        and f.run_date = p.run_date
        and f.first_in_pipeline = 1
    left join metric_values as m
        on m.use_case = p.use_case
        and m.key_id = p.key_id
        and m.run_date = p.run_date
)

select
    use_case,
    key_id,
    key_label,
    run_date,
    is_latest_run_date,
    case
        when is_failing = 1 and is_degrading = 1 then 'failing_and_degrading'
        when is_failing = 1 then 'failing'
        else 'degrading'
    end as issue,
    is_failing,
    is_degrading,
    published_status,
    failing_stage,
    failing_status,
    failing_reason,
    metric_name,
    higher_is_better,
    metric_value,
    previous_run_date,
    previous_metric_value,
    metric_change
from flagged
where is_failing = 1
    or is_degrading = 1
