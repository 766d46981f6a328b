-- Predictions next to actuals, one row per published prediction row that has a period (a time,
-- or an integer period_index) and a numeric prediction of the target (forecast and regression
-- tasks; anomaly and classification rows carry a label and are left out).
--   kind = holdout / scoring: the actual is the row's own (known when the row was scored).
--   kind = forecast: the actual is the newest one known for the same use case, key and period
--     from the holdout or scoring rows of a LATER run date; NULL (pending) until one arrives.
with predictions as (
    select
        use_case,
        key_id,
        key_label,
        run_date,
        row_index,
        kind,
        period,
        period_index,
        prediction,
        actual,
        model_name,
        model_version,
        published_at
    from {{ ref('stg_predictions') }}
    where (period is not null or period_index is not null)
        and prediction is not null
        and predicted_label is null
),

observed as (
    select
        use_case,
        key_id,
        period,
        period_index,
        actual,
        run_date as actual_run_date,
        row_number() over (
            partition by use_case, key_id, period, period_index
            order by run_date desc, published_at desc, row_index desc
        ) as newest_first
    from predictions
    where kind in ('holdout', 'scoring')
        and actual is not null
),

joined as (
    select
        p.use_case,
        p.key_id,
        p.key_label,
        p.run_date,
        p.row_index,
        p.kind,
        p.period,
        p.period_index,
        {{ mmp_week_start('p.period') }} as week_start,
        p.prediction,
        case when p.kind = 'forecast' then o.actual else p.actual end as actual,
        case
            when p.kind = 'forecast' then o.actual_run_date
            when p.actual is not null then p.run_date
        end as actual_run_date,
        p.model_name,
        p.model_version
    from predictions as p
    left join observed as o
        on o.use_case = p.use_case
        and o.key_id = p.key_id
        and (o.period = p.period or o.period_index = p.period_index)  -- a use case has one or the other
        and o.newest_first = 1
        and o.actual_run_date > p.run_date
)

select
    use_case,
    key_id,
    key_label,
    run_date,
    row_index,
    kind,
    period,
    period_index,
    week_start,
    prediction,
    actual,
    actual_run_date,
    case when actual is null then 0 else 1 end as has_actual,
    prediction - actual as error,
    abs(prediction - actual) as abs_error,
    abs(prediction - actual) / nullif(abs(actual), 0) as abs_pct_error,
    model_name,
    model_version
from joined
