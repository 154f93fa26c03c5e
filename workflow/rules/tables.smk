# Tables: paper-style tables from the per-frame metrics of every configured dataset and run, in results/tables/ or
# results/tables/<targets.name>/ (see tables_dir), so that runs over other datasets keep their tables.


rule make_tables:
    input:
        all_metrics,
    output:
        summary=f"{TABLES_DIR}/summary.md",
        table1=table_files("table1"),
        ablations=ablation_files(),
        per_dataset=per_dataset_table_files(),
        record=f"{TABLES_DIR}/.targets.json",
    log:
        TABLES_DIR.replace("results/", "logs/", 1) + ".log",
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
