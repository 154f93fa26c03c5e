# Training: one model per (dataset, run) on every training sequence (transductive, as in the paper), and the
# authors' released checkpoints converted into the pseudo-run `released`.
# OMP_WAIT_POLICY=PASSIVE (here and in the other torch rules): torch's idle OpenMP threads sleep instead of
# spinning, so a job sharing its cores keeps about its share (spinning made training >10x slower beside another
# CPU-bound job: benchmarks/train.py --contention).


rule train_model:
    input:
        unpack(train_inputs),
    output:
        model="results/{dataset}/train/{run}/model.pt",
        metrics="results/{dataset}/train/{run}/metrics.jsonl",
        curve=report(
            "results/{dataset}/train/{run}/loss.png",
            caption=report_caption("loss"),
            category="Training",
            subcategory="{dataset}",
            labels={"run": "{run}"},
        ),
        best="results/{dataset}/train/{run}/best.pt",
    log:
        "logs/{dataset}/train/{run}.log",
    benchmark:
        "benchmarks/{dataset}/train/{run}.tsv"
    wildcard_constraints:
        run="|".join(PIPELINE_RUNS),
    threads: 1  # the small CPU model keeps ~1.1 cores busy with 2 torch threads (its data worker included), so one
    # thread lets another job share the second core (the first command: 395 -> 290 s wall); --set-threads train_model=N
    resources:
        gpu=model_gpus,
        mem_mb=16000,
        runtime=runtime_per_attempt(240),
    params:
        train=train_params_json,
        settings=train_settings_json,
        state_dir="results/{dataset}/train/{run}.state",
    shell:
        """
        OMP_WAIT_POLICY=PASSIVE python -m lrtl.train \
            --frames {input.frames:q} \
            --flow {input.flow:q} \
            --tracks {input.tracks:q} \
            --params {params.train:q} \
            --settings {params.settings:q} \
            --state-dir {params.state_dir:q} \
            --out {output.model:q} \
            --metrics {output.metrics:q} \
            --curve {output.curve:q} \
            --best {output.best:q} \
            --threads {threads} \
            >{log:q} 2>&1
        """


rule convert_checkpoint:
    # A dataset's released checkpoint (weights.released) as an lrtl model of the paper setting, where
    # infer_masks reads a run's model: everything downstream scores it as it scores a trained run.
    input:
        reference=released_checkpoint,
        backbone_weights=released_backbone_weights,
    output:
        model="results/{dataset}/train/released/model.pt",
    log:
        "logs/{dataset}/train/released.log",
    benchmark:
        "benchmarks/{dataset}/train/released.tsv"
    wildcard_constraints:
        dataset="|".join(config["weights"]["released"]),
    resources:
        mem_mb=8000,
    params:
        model=released_model_json,
    shell:
        """
        python -m lrtl.convert \
            --reference {input.reference:q} \
            --model {params.model:q} \
            --out {output.model:q} \
            >{log:q} 2>&1
        """
