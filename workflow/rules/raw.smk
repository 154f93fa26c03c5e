# Synthetic datasets: generated in the DAVIS layout, plus the exact ground truth the oracle backends read.


rule make_synthetic:
    output:
        images=directory("results/{dataset}/raw/JPEGImages/{resolution}/{sequence}"),
        annotations=directory(
            "results/{dataset}/raw/Annotations/{resolution}/{sequence}"
        ),
        ground_truth=directory(
            "results/{dataset}/raw/GroundTruth/{resolution}/{sequence}.zarr"
        ),
    log:
        "logs/{dataset}/raw/{resolution}/{sequence}.log",
    params:
        synthetic=synthetic_params_json,
        index=synthetic_index,
    shell:
        """
        python -m lrtl.synthetic \
            --params {params.synthetic:q} \
            --sequence-index {params.index} \
            --name {wildcards.sequence:q} \
            --images {output.images:q} \
            --annotations {output.annotations:q} \
            --ground-truth {output.ground_truth:q} \
            >{log:q} 2>&1
        """
