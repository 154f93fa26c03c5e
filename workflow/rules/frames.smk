# Frames: one store per sequence, from an image folder or a video file, at the configured resolution.


rule prepare_frames:
    input:
        unpack(raw_inputs),
    output:
        directory("results/{dataset}/frames/{sequence}.zarr"),
    log:
        "logs/{dataset}/frames/{sequence}.log",
    params:
        inputs=raw_flags,
        layout=lambda wildcards: config["datasets"][wildcards.dataset]["layout"],
        frames=stage_params("frames"),
    shell:
        """
        python -m lrtl.frames \
            {params.inputs} \
            --layout {params.layout} \
            --dataset {wildcards.dataset:q} \
            --sequence {wildcards.sequence:q} \
            --params {params.frames:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """
