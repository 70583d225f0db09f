"""The typer application shared by all ``vebi`` sub-commands, and the error-handling entry point."""

from __future__ import annotations

import sys
import warnings

import typer

from vebi.errors import VebiError, VebiWarning

app = typer.Typer(
    name="vebi",
    help="Visual explanation by interpretation: relevant filters, interpretations, explanations, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit non-zero (used by commands for input problems)."""
    typer.echo(f"vebi: error: {message}", err=True)
    raise typer.Exit(code)


def _one_line(message: str) -> str:
    """A VebiError re-raised by a DataLoader worker carries the worker's traceback; keep its last line."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("VebiError: ", 1)[-1]
    return " ".join(lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    typer.echo(f"vebi: warning: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: input errors become one line on stderr and exit code 2, never a traceback;
    a :class:`VebiWarning` is one line too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", VebiWarning)
            warnings.showwarning = _show_warning
            app(args=argv, prog_name="vebi")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except VebiError as exc:
        typer.echo(f"vebi: error: {_one_line(str(exc))}", err=True)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        name = exc.filename if exc.filename is not None else ""
        typer.echo(f"vebi: error: {exc.strerror or 'cannot open'}: {name}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("vebi: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """``console_scripts`` target."""
    sys.exit(main())
