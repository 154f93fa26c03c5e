# Tables: paper-style tables from the per-frame metrics of every configured dataset and run, in results/tables/ or
# results/tables/<targets.name>/ (see tables_dir), so that runs over other datasets keep their tables.


rule make_tables:
    input:
        metrics=all_metrics,
        published=PUBLISHED_NUMBERS,  # quoted in Table 1: editing it reruns the tables
    output:
        summary=f"{TABLES_DIR}/summary.md",
        table1=reported_tables(table_files("table1")),
        ablations=reported_tables(ablation_files()),
        per_dataset=reported_tables(per_dataset_table_files()),
        record=f"{TABLES_DIR}/.targets.json",
    log:
        TABLES_DIR.replace("results/", "logs/", 1) + ".log",
    params:
        tables=tables_params(evaluated_datasets(), ablations=True),
    shell:
        """
        python -m lrtl.tables \
            --metrics {input.metrics:q} \
            --params {params.tables:q} \
            --out-dir "$(dirname {output.summary:q})" \
            --published {input.published:q} \
            >{log:q} 2>&1
        """


use rule make_tables as make_released_tables with:
    # The released checkpoints alone (snakemake released): Table 1 with their row beside the quoted numbers,
    # per-sequence tables, no ablations, in results/tables/[<name>/]released/.
    input:
        metrics=released_metrics,
        published=PUBLISHED_NUMBERS,
    output:
        summary=f"{RELEASED_TABLES_DIR}/summary.md",
        table1=reported_tables(table_files("table1", RELEASED_TABLES_DIR)),
        per_dataset=reported_tables(
            per_dataset_table_files(RELEASED_TABLES_DIR, released_datasets())
        ),
        record=f"{RELEASED_TABLES_DIR}/.targets.json",
    log:
        RELEASED_TABLES_DIR.replace("results/", "logs/", 1) + ".log",
    params:
        tables=tables_params(released_datasets(), ablations=False),
