"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

#: the plugin kinds, as :data:`tlsearch.kinds.KINDS` names them (spelled out here: that module imports
#: torch, and the CLI's ``--help`` must not)
KIND_NAMES = ("backbone", "freezing", "head", "regularizer")

plugin_option = click.option(
    "--plugin",
    "plugin_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="a plugin file to load (repeatable)",
)

threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="PyTorch CPU threads per process (overrides training.threads; default: the cores free "
    "when the study starts, from the load average and the CPU time used just now)",
)

artifacts_option = click.option(
    "--artifacts",
    help="artefact store for checkpoints, study.json, the trail and the exported model: s3://bucket/prefix, "
    "gs://bucket/prefix or a folder (overrides the study's artifacts:; default: the study folder); "
    "with it and --storage, a study folder on this machine may start empty",
)
