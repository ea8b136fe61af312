"""The `semgen` entry point: registers one Typer command per module and turns `SemgenError`
into one red line and exit code 2 (`SEMGEN_DEBUG=1` shows the traceback)."""

from __future__ import annotations

import functools
import importlib
import os
import sys

import typer

from semgen_cli import __version__

# (command name, module under semgen_cli.cli, one-line help). Order is the pipeline order.
COMMANDS = [
    ("toy-data", "toy_data", "Render toy-world clips and captions (the embedded default's data)."),
    ("extract", "extract", "Encode videos into safetensors shards: semantic features, VAE latents, text."),
    ("inspect", "inspect", "Show a shard folder's index as a table; --verify rechecks every sha256."),
    ("fit-compressor", "fit_compressor", "Fit the semantic compressor (MLP, KL) on extracted features."),
    ("train-latent", "train_latent", "Stage 1: train the latent DiT on VAE latents | compressed semantics."),
    ("train-semantic", "train_semantic", "Stage 2: train the semantic DiT on compressed semantics | text."),
    ("merge", "merge", "Fold a LoRA run's adapters into its base: a standalone run."),
    ("generate", "generate", "Text → semantic plan → VAE latents → mp4."),
    ("drift", "drift", "Measure quality drift between the first and last 15% of videos."),
    ("toy-eval", "toy_eval", "Score a pipeline on toy-world prompts with the pixel-exact judge."),
    ("info", "info", "Versions, devices and the bundled default pipeline."),
]

app = typer.Typer(
    name="semgen",
    help="SemanticGen (arXiv 2512.20619): video generation in semantic space, one stage per command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"semgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """SemanticGen (arXiv 2512.20619): video generation in semantic space, one stage per command."""


def _numbers_checked(command):
    """`command` preceded by the check of its numbers (finite, in range) before any work starts."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from semgen_cli.cli.options import check_numbers

        check_numbers(kwargs)
        return command(*args, **kwargs)

    return run


for _name, _module, _help in COMMANDS:
    _mod = importlib.import_module(f"semgen_cli.cli.{_module}")
    app.command(name=_name, help=_mod.command.__doc__ or _help, short_help=_help)(_numbers_checked(_mod.command))


def main() -> None:
    """Console-script entry: run the app; known errors become one red line and exit 2."""
    from semgen_cli.errors import SemgenError, out_of_memory

    try:
        # standalone_mode=False makes click *return* the code of a typer.Exit instead of exiting
        code = app(standalone_mode=False)
    except SemgenError as err:
        if os.environ.get("SEMGEN_DEBUG") == "1":
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as err:  # click usage errors, from whichever click typer brings
        kind = _click_kind(err)
        if kind is None and out_of_memory(err) and os.environ.get("SEMGEN_DEBUG") != "1":
            _fail(f"out of memory ({out_of_memory(err)}); ask for less: a smaller size, batch, length or width", 2)
        if kind is None:
            raise
        if kind == "Abort":
            _fail("aborted", 1)
        if kind == "Exit":
            sys.exit(getattr(err, "exit_code", 0) or 0)
        _show_usage_error(err)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _click_kind(err: BaseException) -> str | None:
    """'ClickException', 'Abort' or 'Exit' when `err` is one of click's, else None.

    Typer 0.12–0.15 raise the exceptions of the `click` package; later typers vendor click as
    `typer._click`, whose classes are not the standalone package's. Matching by class name within
    a module whose name mentions click holds for both (and for whatever a new release brings).
    """
    for cls in type(err).__mro__:
        if "click" in cls.__module__ and cls.__name__ in ("ClickException", "Abort", "Exit"):
            return cls.__name__
    return None


def _show_usage_error(err: Exception) -> None:
    """Print a click usage error the way click does (a usage line, a hint, one error line);
    fall back to the bare message if the error cannot show itself."""
    try:
        err.show()  # type: ignore[attr-defined]
    except Exception:
        msg = getattr(err, "format_message", lambda: str(err))()
        _fail(msg, 2)


def _fail(message: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    from semgen_cli.cli._common import printable

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(printable(message))}")
    sys.exit(code)


if __name__ == "__main__":
    main()
