"""The root ``pipeline`` group; the command modules add their commands to it."""
from __future__ import annotations

import sys

import click

from .options import quiet_option


class PipelineGroup(click.Group):
    """The root group: every error, usage errors included, is one line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "pipeline"
            click.echo(f"Error: {' '.join(exc.format_message().split())} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
                raise
            # a DuckDB error outside a command's own handling (a damaged catalog): one line, never a traceback
            click.echo(f"Error: the store's catalog cannot be read: {' '.join(str(exc).split())[:300]}; run "
                       "`pipeline verify` (--repair rebuilds it).", err=True)
            sys.exit(1)
        sys.exit(0)


@click.group(cls=PipelineGroup)
@click.version_option(package_name="zsl-pipeline")
@quiet_option
def cli():
    """Interpretable zero-shot image classification on CLIP.

    \b
    pipeline demo                                  # everything, offline, in a minute
    pipeline build-attributes --from-json descriptors_cub.json
    pipeline index-images photos/ --preset cub-b32
    pipeline classify --method lazsl               # settings recorded with the images
    pipeline evaluate --method clip,dclip,wca,lazsl
    pipeline sql "select * from top_attributes limit 10"
    pipeline explain photos/cat/001.jpg            # heatmaps + attribute shares
    pipeline report -o report.html                 # a static page per run
    pipeline faithfulness --steps 10               # deletion/insertion AUC, pointing game
    """

