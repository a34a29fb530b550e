"""The ``geolabel`` command line: one module per command group, each a module-level Typer sub-app merged here.

=====================  ======================================================
module                 commands
=====================  ======================================================
flows.cli_project      init, status, open, demo, doctor
flows.cli_loop         ingest, preannotate, push, sync, cycle, serve
flows.cli_intake       intake setup | pull
flows.cli_ml           ml-backend
flows.cli_labelstudio  labelstudio start | stop | status | webhook
flows.cli_datasets     export coco, snapshot create | list | verify, evaluate, quality
flows.cli_db           db upgrade | current | downgrade
flows.cli_predict      predict
=====================  ======================================================

Shared options (``--data-dir``, ``--json``, ``--project``, ``--profile``) are defined once in
:mod:`flows.cli_common`. Errors are printed as one clear line (exit code 1) unless ``--debug`` is given, which shows
the traceback. Command modules import their heavy dependencies inside the commands: ``geolabel --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer

from flows.cli_common import debug_enabled, set_debug

app = typer.Typer(
    name="geolabel",
    help="GeoSeg labeling assistant: pre-annotate, verify in Label Studio, export datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: The modules whose ``app`` is merged into the root (their commands and groups appear at the top level).
COMMAND_MODULES: tuple[str, ...] = (
    "flows.cli_project",
    "flows.cli_loop",
    "flows.cli_intake",
    "flows.cli_ml",
    "flows.cli_labelstudio",
    "flows.cli_datasets",
    "flows.cli_db",
    "flows.cli_predict",
    "flows.cli_calibrate",
    "flows.cli_storage",
    "flows.cli_prefect",
    "flows.dispatch_cli",  # geolabel deploy / dispatch (scale-out on a work pool)
    "flows.cli_geo",
)


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Show library output (Prefect, transformers, ...) on the terminal too; by "
                     "default it goes to <data_dir>/logs/geolabel.log."),
    ] = False,
) -> None:
    set_debug(debug)
    if verbose:  # read by flows.prefect_server.prepare_command when the command sets up its console
        os.environ["GEOLABEL_VERBOSE"] = "1"


@app.command()
def version() -> None:
    """Print the package version."""
    from importlib.metadata import version as _v

    typer.echo(_v("geolabel"))


def _merge() -> None:
    """Each module's ``app`` is merged into the root (``flows.cli_intake`` as the ``intake`` group); a module that
    only has the older ``register(app)`` hook is registered through it."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if name == "flows.cli_intake":
            app.add_typer(module.app, name="intake")
        elif hasattr(module, "app"):
            app.add_typer(module.app)
        else:
            module.register(app)


_merge()


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message with newlines folded (a multi-line message stays one line)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # one clear line unless --debug
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug_enabled() or "--debug" in (argv if argv is not None else sys.argv):
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(1)
    # With standalone_mode=False click returns a command's `raise typer.Exit(code)` as a value instead of exiting.
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
