# lrtl: learning motion segmentation from point trajectories (Karazija et al., NeurIPS 2024).
#
# Results map (every unit of work is one of these paths; ask for one to (re)build exactly it):
#
# results/{dataset}/raw/...                               synthetic datasets only: DAVIS layout + GroundTruth/{res}/{sequence}.zarr
# results/{dataset}/frames/{sequence}.zarr                uint8 [T,H,W,3] at the configured resolution + native GT
# results/{dataset}/flow/{sequence}.zarr                  float32 [T,H,W,2] per signed gap
# results/{dataset}/tracks/{sequence}/chunk-{chunk}.zarr  one store per tracking job (query frames of one chunk)
# results/{dataset}/tracks/{sequence}/index.json          chunk list + check that every frame was queried once
# results/{dataset}/train/{run}/model.pt                  self-describing checkpoint of the last step (used downstream)
# results/{dataset}/train/{run}/best.pt                   best validation J on annotated frames: GT-selected, a diagnostic
# results/{dataset}/train/{run}/metrics.jsonl, loss.png   losses, lr, it/s, memory, validation J; the curves
# results/{dataset}/train/{run}.state/                    resume state (not a declared output)
# results/{dataset}/train/released/model.pt               the authors' released checkpoint, converted (run `released`)
# results/{dataset}/masks/{run}/{sequence}.zarr           soft masks [T,K,h,w] + merged [T,2,h,w]
# results/{dataset}/masks/{run}/{sequence}/               binary mask PNGs, overlay sheet, GIF (+ as SVG), K-mask picture
# results/{dataset}/masks/baseline/{sequence}.zarr        no-learning baseline masks from flow
# results/{dataset}/masks/baseline_tracks/{sequence}.zarr no-learning baseline masks from tracks clustered by motion
# results/{dataset}/metrics/{run}/{sequence}.tsv          per-frame IoU / boundary F of every annotated frame
# results/tables/[{name}/]                                paper-style tables (.md .csv .tex .html) and pictures; {name} =
#                                                         targets.name ("" for the default run)
# results/tables/[{name}/]released/                       Table 1 of the released checkpoints alone (rule released)
# `all` asks for every artefact above, so a deleted intermediate is rebuilt with exactly what depends on it.
#
# logs/... and benchmarks/...                             the output path with results/ -> logs/ (.log) or benchmarks/ (.tsv)

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"  # snakemake --report report.html: this page, then what workflow/rules/report.smk marks


include: "workflow/rules/common.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/raw.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/tracks.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/weights.smk"


rule all:
    input:
        all_frames,
        all_flow,
        all_tracks,
        all_models,
        all_masks,
        all_pictures,
        all_metrics,
        all_tables,


rule paper:
    # The paper's tables: Table 1 and the ablation tables for targets.datasets x targets.runs
    # (snakemake paper --configfile config.paper.yaml).
    input:
        all_tables,


rule released:
    # The authors' released checkpoints (weights.released), converted and scored by this pipeline on the target
    # datasets that have one: results/tables/[<name>/]released/ (snakemake released --configfile config.paper.yaml).
    input:
        rules.make_released_tables.output,


rule all_frames:
    input:
        all_frames,


rule all_flow:
    input:
        all_flow,


rule all_tracks:
    input:
        all_tracks,


rule all_models:
    input:
        all_models,


rule all_masks:
    input:
        all_masks,


rule all_pictures:
    input:
        all_pictures,


rule all_metrics:
    input:
        all_metrics,
