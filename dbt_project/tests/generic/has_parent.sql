{#- A relationships test over several columns: fails with every child row whose `columns`
    have no row with the same values in `to` (on `parent_columns`, default the same names).
    Child rows with a NULL in any of the columns are not checked, as in dbt's relationships. -#}
{% test has_parent(model, columns, to, parent_columns=none) %}
    {%- set parent_columns = parent_columns or columns %}
    select
        {%- for col in columns %}
        child.{{ col }}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from {{ model }} as child
    left join {{ to }} as parent
        on {% for i in range(columns | length) -%}
            child.{{ columns[i] }} = parent.{{ parent_columns[i] }}{% if not loop.last %} and {% endif %}
        {%- endfor %}
    where parent.{{ parent_columns[0] }} is null
        {%- for col in columns %}
        and child.{{ col }} is not null
        {%- endfor %}
{% endtest %}
