"""lrtl: learning motion segmentation from point trajectories, as a Snakemake pipeline."""

__version__ = "0.1.0"
