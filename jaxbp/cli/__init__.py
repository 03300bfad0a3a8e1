"""The ``jaxbp`` command line: ``check``, ``train``, ``explain`` and ``download``.

One module per command, each with its ``add_parser(sub)`` and its ``run(args)``:

* :mod:`jaxbp.cli.check`: ``jaxbp check`` prints the per-leaf report of manual
  against autodiff (and finite-difference) gradients.
* :mod:`jaxbp.cli.train`: ``jaxbp train`` trains an MLP (or, with ``--model``, any
  :class:`~jaxbp.Sequential` network) on MNIST or Fashion-MNIST, showing the progress
  of a long epoch on stderr; :mod:`jaxbp.cli.run_folder` keeps its ``--out`` folder
  (``metrics.json``, ``checkpoint.npz``, the ``--resume`` checks).
* :mod:`jaxbp.cli.explain`: ``jaxbp explain`` shows every number of one
  backpropagation step of a small network, as text, JSON or a page.
* :mod:`jaxbp.cli.download`: ``jaxbp download`` fetches a dataset into the cache.

This module holds :func:`main` and the top-level parser that dispatches to them.
Every error is one ``jaxbp <command>: error: ...`` message and a non-zero exit status,
never a traceback. An error that carries the setting it is about
(:class:`~jaxbp.config.ConfigError`, a :class:`~jaxbp.data.DataError` with a
``field``) is prefixed with that setting's flag, found by its ``dest``
(``jaxbp train: error: --grad: ...``); its message is the library's, unchanged.
"""

import argparse
import re
import sys
from collections.abc import Sequence

from jaxbp import checkpoint, data
from jaxbp.cli import _flags, check, download, explain, train
from jaxbp.cli._flags import UsageError
from jaxbp.config import ConfigError
from jaxbp.train import DivergenceError

_COMMANDS = (check, train, download, explain)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxbp`` argument parser with its four subcommands."""
    parser = _flags.Parser(
        prog="jaxbp",
        description="Backpropagation in JAX: a hand-derived backward pass beside "
        "jax.grad.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{check,train,download,explain}"
    )
    sub.required = True
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def _flag_of(parser: argparse.ArgumentParser, command: str, field: str) -> str | None:
    """The flag of ``command`` whose ``dest`` is ``field``, or ``None``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        if action.dest == field and action.option_strings:
            return action.option_strings[0]
    return None


def _with_flag(message: str, parser, command: str, field: str | None) -> str:
    """``--flag: message`` for an error about ``field``; else the message as is."""
    flag = None if field is None else _flag_of(parser, command, field)
    return message if flag is None else f"{flag}: {message}"


def _print_error(prog: str, message: str) -> None:
    """``<prog>: error: <message>`` on stderr."""
    print(f"{prog}: error: {message.strip()}", file=sys.stderr)


def _with_dash_value_hint(message: str, argv: Sequence[str]) -> str:
    """argparse's error for ``--x -1,2`` (a value read as a flag), with the fix."""
    missing = re.fullmatch(r"argument (--[\w-]+): expected one argument", message)
    if missing:
        flag = missing[1]
        for given, value in zip(argv, argv[1:], strict=False):
            if len(given) > 2 and flag.startswith(given) and re.match(r"-\.?\d", value):
                return (
                    f"{message}; to pass a value that starts with '-', join it to the "
                    f"flag: write {flag}={value}"
                )
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxbp`` console script and ``python -m jaxbp``.

    Every error is reported as ``jaxbp <command>: error: <message>`` on stderr with no
    traceback: one line, except for a data error, whose list of searched folders and
    advice keep their lines. Exit status 2 for bad flags, 1 for other errors, 130
    when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    prog = parser.prog
    command = None
    try:
        args, unknown = parser.parse_known_args(argv)
        command = args.command
        prog = f"{parser.prog} {command}"
        if unknown:  # reported by the subcommand, not the top-level parser
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        return args.func(args)
    except UsageError as e:
        _print_error(e.prog or prog, _with_dash_value_hint(str(e), argv))
        return 2
    except ConfigError as e:
        _print_error(prog, _with_flag(str(e), parser, command, e.field))
        return 2
    except data.DataError as e:
        _print_error(prog, _with_flag(str(e), parser, command, e.field))
        return 1
    except (
        checkpoint.CheckpointError,
        DivergenceError,
        ValueError,
        OSError,
    ) as e:
        # One line: library messages may wrap for readers of a traceback.
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        _print_error(prog, message or type(e).__name__)
        return 1
    except KeyboardInterrupt as e:
        print(f"{prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
