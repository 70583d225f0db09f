"""The typer application shared by all ``vebi`` sub-commands, and the error-handling entry point."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import NoReturn

import typer

from vebi.cli._dynamo import deferred_dynamo
from vebi.cli._malloc import reexec_on_tcmalloc
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
    """A VebiError re-raised by a DataLoader worker carries the worker's traceback; keep its last line.
    Names that are not UTF-8 (file names read with surrogate escapes) are shown escaped."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("VebiError: ", 1)[-1]
    return " ".join(lines)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each VebiWarning as one ``vebi: warning:`` line (other warnings as Python shows them)."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if issubclass(category, VebiWarning):
                typer.echo(f"vebi: warning: {_one_line(str(message))}", err=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = one_line
        warnings.simplefilter("always", VebiWarning)
        yield


def main(argv: list[str] | None = None) -> int:
    """Console entry point: input errors become one line on stderr and exit code 2, never a traceback;
    a :class:`VebiWarning` is one line too."""
    try:
        with _warnings_as_lines():
            app(args=argv, prog_name="vebi")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except VebiError as exc:
        typer.echo(f"vebi: error: {_one_line(str(exc))}", err=True)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        name = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or "cannot open"
        typer.echo(f"vebi: error: {_one_line(f'{reason}: {name}')}", err=True)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, ...: outputs are written atomically, none is half done
        where = f": {exc.filename}" if exc.filename is not None else ""
        typer.echo(f"vebi: error: {_one_line(f'{exc.strerror or exc}{where}')}; the files being written were left as "
                   "they were", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("vebi: interrupted", err=True)
        return 130
    return 0


def leave(status: int) -> NoReturn:
    """End the process with ``status`` as the interpreter's exit would, less its teardown.

    With torch loaded, the teardown (module clearing and its final garbage collections) spends 1-1.5 s
    of one core after a command's work is done (``benchmarks/bench_cli_start.py``). What the exit does
    that matters still happens, in the interpreter's order: the threads that are not daemons are joined,
    the atexit handlers run (logging, multiprocessing's children, temporary folders), the standard
    streams are flushed. Every output file is closed by then: all are written atomically.
    """
    # the interpreter's own two calls at exit (private names of CPython; the project pins 3.11)
    threading._shutdown()  # type: ignore[attr-defined]  # its exit hooks (executors), then joins the threads
    atexit._run_exitfuncs()  # runs the handlers, last registered first, and clears them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a stream closed
            stream.flush()
    os._exit(status)


def run() -> None:
    """``console_scripts`` target: on tcmalloc when the machine has it (:mod:`vebi.cli._malloc`), TorchDynamo
    imported only if something uses it (:mod:`vebi.cli._dynamo`); leaves without the interpreter's teardown
    (:func:`leave`). An exception that escapes :func:`main` (a bug) takes Python's own way out, with its
    traceback."""
    reexec_on_tcmalloc(sys.argv[1:])
    with deferred_dynamo():
        status = main()
    leave(status)
