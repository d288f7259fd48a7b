"""``pipeline``: the command line, a thin shell over the stages.

Each command parses options (:mod:`.options` defines the shared ones), calls one stage
function, and prints (:mod:`.output`). Commands live in one module per group:
:mod:`.attributes`, :mod:`.images`, :mod:`.runs`, :mod:`.explain`, :mod:`.store`, :mod:`.demo`, :mod:`.verify`.
``docs/cli.md`` is generated from ``--help`` (``python -m pipeline.cli.docs``) and a test
keeps it up to date.
"""
from __future__ import annotations

from . import attributes, compositional, concepts, demo, explain, images, runs, store, verify  # noqa: F401  (each adds its commands)
from .group import PipelineGroup, cli

__all__ = ["PipelineGroup", "cli", "main"]


def main():  # pragma: no cover
    cli()
