# Weights for the paper setting and the authors' released checkpoints: run once on a machine with internet (e.g.
# the login node).
# Its outputs are exactly the files the GPU rules declare as inputs; on offline clusters, place them by hand.


localrules:
    download_weights,
    index_tracks,
    make_tables,
    make_released_tables,


rule download_weights:
    output:
        hub_repo=directory(config["tracks"]["cotracker"]["repo_dir"]),
        cotracker=config["tracks"]["cotracker"]["checkpoint"],
        raft=config["flow"]["raft"]["weights"],
        dino_vitb8=config["train"]["defaults"]["model"]["backbone"]["weights"],
        dino_vits8=config["infer"]["dino_weights"],
        released=[spec["path"] for spec in config["weights"]["released"].values()],
    log:
        "logs/download_weights.log",
    params:
        repo_url=config["weights"]["cotracker_repo_url"],
        commit=config["tracks"]["cotracker"]["commit"],
        cotracker_url=config["weights"]["cotracker_url"],
        raft_url=config["weights"]["raft_url"],
        dino_vitb8_url=config["weights"]["dino_vitb8_url"],
        dino_vits8_url=config["weights"]["dino_vits8_url"],
        released=" ".join(
            shlex.quote(value)
            for spec in config["weights"]["released"].values()
            for value in (spec["url"], spec["path"])
        ),
    shell:
        """
        (
            git clone --quiet {params.repo_url:q} {output.hub_repo:q}
            git -C {output.hub_repo:q} checkout --quiet {params.commit:q}
            curl -fL --retry 3 -o {output.cotracker:q} {params.cotracker_url:q}
            curl -fL --retry 3 -o {output.raft:q} {params.raft_url:q}
            curl -fL --retry 3 -o {output.dino_vitb8:q} {params.dino_vitb8_url:q}
            curl -fL --retry 3 -o {output.dino_vits8:q} {params.dino_vits8_url:q}
            set -- {params.released}
            while [ $# -gt 0 ]; do
                curl -fL --retry 3 -o "$2" "$1"
                shift 2
            done
        ) >{log:q} 2>&1
        """
