# The Snakemake report (snakemake --report report.html, after a run and with the same --configfile): which outputs
# it shows, grouped how, with which caption (workflow/report/*.rst). The rules wrap those outputs in report(...);
# the flags change no job, no output path and no rerun decision.
#
#   Tables                      All datasets: Table 1 and the ablation tables; <dataset>: per-sequence table and
#                               bar chart, official measures (each table as the .html page lrtl.tables writes)
#   Training                    <dataset>: the loss curves of every run
#   Masks (<dataset>)           <run>: overlay GIF (as overlay.svg), overlay sheet and K-mask sheet per sequence
#
# Captions are paths relative to workflow/rules/, where the rules that use them are defined.

TABLES_CATEGORY = "Tables"
ALL_DATASETS = "All datasets"
RELEASED_SUBCATEGORY = "Released checkpoints"


def report_caption(name):
    """The caption file workflow/report/<name>.rst, as a rule in workflow/rules/ names it."""
    return f"../report/{name}.rst"


def table_report_flags(folder, datasets, ablations, released=False):
    """{path: report() keywords} of the pages (.html) and charts (.png) lrtl.tables writes into `folder`."""
    overall = RELEASED_SUBCATEGORY if released else ALL_DATASETS
    flags = {
        f"{folder}/table1.html": dict(
            caption=report_caption("table1"),
            subcategory=overall,
            labels={"table": "Table 1"},
        ),
    }
    for group in ablations:
        title = config["tables"]["ablations"][group]["title"]
        flags[f"{folder}/ablation-{group}.html"] = dict(
            caption=report_caption("ablation"),
            subcategory=overall,
            labels={"table": f"Ablation: {title}"},
        )
    for dataset in datasets:
        subcategory = f"{RELEASED_SUBCATEGORY}: {dataset}" if released else dataset
        for stem, caption, label in (
            ("per-sequence-{d}.html", "per-sequence", "per-sequence J"),
            ("per-sequence-{d}.png", "per-sequence-chart", "per-sequence J, bar chart"),
            ("measures-{d}.html", "measures", "official DAVIS measures"),
        ):
            flags[f"{folder}/{stem.format(d=dataset)}"] = dict(
                caption=report_caption(caption),
                subcategory=subcategory,
                labels={"table": label},
            )
    return flags


TABLE_REPORT_FLAGS = {
    **table_report_flags(
        TABLES_DIR, evaluated_datasets(), config["tables"]["ablations"]
    ),
    **table_report_flags(RELEASED_TABLES_DIR, released_datasets(), [], released=True),
}


def reported_tables(paths):
    """`paths` with every table page and chart flagged for the report (the .md, .csv and .tex files stay plain)."""
    flagged = []
    for path in paths:
        keywords = TABLE_REPORT_FLAGS.get(path)
        flagged.append(
            path
            if keywords is None
            else report(path, category=TABLES_CATEGORY, **keywords)
        )
    return flagged


# The pictures of one sequence (lrtl.pictures) shown in the report, by file stem: the GIF goes in as the SVG image
# that embeds it, since the report shows PNG and SVG images but offers a GIF only as a download.
REPORT_PICTURES = {
    "overlay": "overlay, animated",
    "overlay-sheet": "overlay sheet",
    "k-masks-sheet": "K masks before the merge",
}
REPORT_PICTURE_PATTERNS = [
    "{picture,overlay}.svg",
    "{picture,overlay-sheet|k-masks-sheet}.png",
]


def picture_labels(wildcards):
    """Report labels of one picture of a sequence's picture folder (draw_pictures)."""
    return {
        "sequence": wildcards.sequence,
        "picture": REPORT_PICTURES[wildcards.picture],
    }
