# Point tracks: one job and one zarr store per chunk of query frames, then a per-sequence index.


rule track_chunk:
    input:
        unpack(track_inputs),
    output:
        directory("results/{dataset}/tracks/{sequence}/chunk-{chunk}.zarr"),
    log:
        "logs/{dataset}/tracks/{sequence}/chunk-{chunk}.log",
    benchmark:
        "benchmarks/{dataset}/tracks/{sequence}/chunk-{chunk}.tsv"
    threads: 1
    resources:
        gpu=tracker_gpus,
        mem_mb=8000,
        runtime=runtime_per_attempt(120),
    params:
        inputs=input_flags,
        tracks=stage_params("tracks"),
        settings=stage_settings("tracks"),
    shell:
        """
        OMP_WAIT_POLICY=PASSIVE python -m lrtl.tracks chunk \
            {params.inputs} \
            --chunk {wildcards.chunk} \
            --dataset {wildcards.dataset:q} \
            --sequence {wildcards.sequence:q} \
            --params {params.tracks:q} \
            --settings {params.settings:q} \
            --out {output:q} \
            --threads {threads} \
            >{log:q} 2>&1
        """


rule index_tracks:
    input:
        frames="results/{dataset}/frames/{sequence}.zarr",
        chunks=chunk_paths,
    output:
        "results/{dataset}/tracks/{sequence}/index.json",
    log:
        "logs/{dataset}/tracks/{sequence}/index.log",
    params:
        tracks=stage_params("tracks"),
        settings=stage_settings("tracks"),
    shell:
        """
        python -m lrtl.tracks index \
            --frames {input.frames:q} \
            --chunks {input.chunks:q} \
            --params {params.tracks:q} \
            --settings {params.settings:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """
