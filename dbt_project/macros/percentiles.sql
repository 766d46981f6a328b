{#- A SELECT that returns, per group, continuous (linearly interpolated) percentiles of a column.

    mmp_percentiles('vals', 'metric_value', ['use_case', 'run_date'], [0.1, 0.5, 0.9])
      -> use_case, run_date, p10, p50, p90   (NULL values ignored; groups with none are absent)

    Use it as the body of a CTE. PostgreSQL and DuckDB have percentile_cont as an ordered-set
    aggregate; SQL Server and Synapse only as a window function, hence SELECT DISTINCT there. -#}

{% macro mmp_percentile_name(p) -%}
    p{{ (p * 100) | round | int }}
{%- endmacro %}

{% macro mmp_percentiles(relation, value_column, group_by, percentiles) %}
    {{- return(adapter.dispatch('mmp_percentiles', 'many_models_platform')(relation, value_column, group_by, percentiles)) -}}
{% endmacro %}

{% macro default__mmp_percentiles(relation, value_column, group_by, percentiles) %}
    select
        {%- for col in group_by %}
        {{ col }},
        {%- endfor %}
        {%- for p in percentiles %}
        percentile_cont({{ p }}) within group (order by {{ value_column }}) as {{ mmp_percentile_name(p) }}
        {%- if not loop.last %},{% endif %}
        {%- endfor %}
    from {{ relation }}
    where {{ value_column }} is not null
    group by {{ group_by | join(', ') }}
{% endmacro %}

{% macro sqlserver__mmp_percentiles(relation, value_column, group_by, percentiles) %}
    select distinct
        {%- for col in group_by %}
        {{ col }},
        {%- endfor %}
        {%- for p in percentiles %}
        percentile_cont({{ p }}) within group (order by {{ value_column }})
            over (partition by {{ group_by | join(', ') }}) as {{ mmp_percentile_name(p) }}
        {%- if not loop.last %},{% endif %}
        {%- endfor %}
    from {{ relation }}
    where {{ value_column }} is not null
{% endmacro %}
