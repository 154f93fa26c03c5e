# Optical flow: forward and backward for every configured gap (flow.gaps, or the dataset's own gaps) and gap 1
# (the flow-chaining tracker, evaluation and the baseline need it).


rule compute_flow:
    input:
        unpack(flow_inputs),
    output:
        directory("results/{dataset}/flow/{sequence}.zarr"),
    log:
        "logs/{dataset}/flow/{sequence}.log",
    benchmark:
        "benchmarks/{dataset}/flow/{sequence}.tsv"
    threads: 2
    resources:
        gpu=flow_gpus,
        mem_mb=8000,
        runtime=runtime_per_attempt(60),
    params:
        inputs=input_flags,
        flow=flow_params_json,
        settings=stage_settings("flow"),
    shell:
        """
        OMP_WAIT_POLICY=PASSIVE python -m lrtl.flow \
            {params.inputs} \
            --params {params.flow:q} \
            --settings {params.settings:q} \
            --threads {threads} \
            --out {output:q} \
            >{log:q} 2>&1
        """
