# Masks: the trained model's K soft masks merged to 2 per frame, the no-learning baselines from flow and tracks,
# and the pictures of every masks store (a CPU job of its own, so that picture settings never rerun inference).


rule infer_masks:
    input:
        unpack(infer_inputs),
    output:
        directory("results/{dataset}/masks/{run}/{sequence}.zarr"),
    log:
        "logs/{dataset}/masks/{run}/{sequence}.log",
    benchmark:
        "benchmarks/{dataset}/masks/{run}/{sequence}.tsv"
    wildcard_constraints:
        run="|".join(PIPELINE_RUNS + [RELEASED_RUN]),
    threads: 1  # inference of the small model keeps one core busy (benchmarks: CPU s / wall s 0.99)
    resources:
        gpu=model_gpus,
        mem_mb=8000,
        runtime=runtime_per_attempt(60),
    params:
        infer=stage_params("infer"),
        flow=infer_flow_flag,
        settings=stage_settings("infer"),
    shell:
        """
        OMP_WAIT_POLICY=PASSIVE python -m lrtl.infer \
            --model {input.model:q} \
            --frames {input.frames:q} \
            {params.flow} \
            --run {wildcards.run:q} \
            --params {params.infer:q} \
            --settings {params.settings:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """


rule baseline_masks:
    input:
        frames="results/{dataset}/frames/{sequence}.zarr",
        flow="results/{dataset}/flow/{sequence}.zarr",
    output:
        directory("results/{dataset}/masks/baseline/{sequence}.zarr"),
    log:
        "logs/{dataset}/masks/baseline/{sequence}.log",
    params:
        baseline=stage_params("baseline"),
    shell:
        """
        python -m lrtl.baseline \
            --frames {input.frames:q} \
            --flow {input.flow:q} \
            --params {params.baseline:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """


rule draw_pictures:
    input:
        masks="results/{dataset}/masks/{run}/{sequence}.zarr",
        frames="results/{dataset}/frames/{sequence}.zarr",
    output:
        report(
            directory("results/{dataset}/masks/{run}/{sequence}"),
            patterns=REPORT_PICTURE_PATTERNS,
            caption=report_caption("pictures"),
            category="Masks ({dataset})",
            subcategory="{run}",
            labels=picture_labels,
        ),
    log:
        "logs/{dataset}/masks/{run}/{sequence}.pictures.log",
    params:
        pictures=lambda wildcards: json.dumps(
            config["infer"]["pictures"], sort_keys=True
        ),
    shell:
        """
        python -m lrtl.pictures \
            --masks {input.masks:q} \
            --frames {input.frames:q} \
            --params {params.pictures:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """


rule track_baseline_masks:
    input:
        frames="results/{dataset}/frames/{sequence}.zarr",
        tracks="results/{dataset}/tracks/{sequence}/index.json",
        chunks=chunk_paths,  # read through index.json
    output:
        directory("results/{dataset}/masks/baseline_tracks/{sequence}.zarr"),
    log:
        "logs/{dataset}/masks/baseline_tracks/{sequence}.log",
    benchmark:
        "benchmarks/{dataset}/masks/baseline_tracks/{sequence}.tsv"
    params:
        track_baseline=stage_params("track_baseline"),
    shell:
        """
        python -m lrtl.track_baseline \
            --frames {input.frames:q} \
            --tracks {input.tracks:q} \
            --params {params.track_baseline:q} \
            --out {output:q} \
            >{log:q} 2>&1
        """
