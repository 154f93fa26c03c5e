# Tables: paper-style tables from the per-frame metrics of every configured dataset and run.


rule make_tables:
    input:
        all_metrics,
    output:
        summary="results/tables/summary.md",
        table1=multiext("results/tables/table1", ".md", ".csv", ".tex"),
    log:
        "logs/tables.log",
    params:
        tables=tables_params_json,
    shell:
        """
        python -m lrtl.tables \
            --metrics {input:q} \
            --params {params.tables:q} \
            --out-dir "$(dirname {output.summary:q})" \
            >{log:q} 2>&1
        """
