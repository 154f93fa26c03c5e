# Metrics: per-frame IoU and boundary F of every annotated frame of one sequence, for one run.


rule evaluate_sequence:
    input:
        masks="results/{dataset}/masks/{run}/{sequence}.zarr",
        frames="results/{dataset}/frames/{sequence}.zarr",
    output:
        "results/{dataset}/metrics/{run}/{sequence}.tsv",
    log:
        "logs/{dataset}/metrics/{run}/{sequence}.log",
    params:
        evaluate=stage_params("evaluate"),
    shell:
        """
        python -m lrtl.evaluate \
            --masks {input.masks:q} \
            --frames {input.frames:q} \
            --params {params.evaluate:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """
