"""The ``geolabel`` command line. Each command group lives in its own module and is registered here.

Errors are printed as one clear line (exit code 1) unless ``--debug`` is given, which shows the traceback.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="geolabel",
    help="GeoSeg labeling assistant: pre-annotate, verify in Label Studio, export datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


@app.command()
def version() -> None:
    """Print the package version."""
    from importlib.metadata import version as _v

    typer.echo(_v("geolabel"))


def _register() -> None:
    """Attach command groups; each module exposes ``register(app)``."""
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


# Modules that add commands. Keep imports inside commands lazy: `geolabel --help` must stay fast.
_COMMAND_MODULES: list[str] = [
    "flows.cli_db",
    "flows.cli_predict",
    "flows.cli_datasets",
    "flows.cli_flows",
    "flows.cli_labelstudio",
    "flows.cli_ml",
    "flows.cli_geo",
]


def main(argv: list[str] | None = None) -> None:
    _register()
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
        if _state["debug"] or "--debug" in (argv or sys.argv):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    # With standalone_mode=False click returns a command's `raise typer.Exit(code)` as a value instead of exiting.
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
