"""``jaxbp explain``: one step of a small network, every number.

The command line's side of :mod:`jaxbp.explainer`: :func:`add_parser` declares the
flags, :func:`explain_page` turns their values into the rendered trace, and
:func:`run` prints or writes it. Everything a learner can get wrong (a parameter file
that is not JSON, shapes that do not chain, a network too large to read, inputs of the
wrong length, flags that do not go together) is checked in :func:`explain_page` and
raised as a ``ValueError`` whose message is one line and names the flag. The
library's errors say what is wrong with a value; an
:class:`~jaxbp.explainer.InputError` carries the argument it came in as, and this
module names its flag.
"""

import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import explainer
from jaxbp._atomic import write_atomically
from jaxbp.cli import _flags
from jaxbp.cli._flags import UsageError
from jaxbp.explainer import examples as examples_lib
from jaxbp.explainer.inputs import (
    InputError,
    parse_numbers,
    parse_targets,
    read_params,
    sizes_of,
)
from jaxbp.explainer.trace import check_size, explain
from jaxbp.mlp import MLP
from jaxbp.render import render_html, render_json, render_text

FORMATS = ("text", "json", "html")
#: The learning rate when neither ``lr`` nor an example gives one.
DEFAULT_LR = 0.5


def add_parser(sub) -> None:
    """Adds ``explain`` to the ``jaxbp`` subcommands ``sub``."""
    ex = sub.add_parser(
        "explain",
        help="show every number of one backpropagation step of a small network",
        description="Trace one gradient-descent step of a small MLP on one example "
        "(or a few): the forward pass, the loss, the delta of every unit, the chain "
        "rule for every weight and bias (sum over paths and matrix form), the "
        "manual gradient beside jax.grad's, and the weights after the step. At most "
        "8 units per layer, 4 layers and 4 examples.",
        epilog="Examples: jaxbp explain --example sigmoid-2-2-2 | jaxbp explain "
        "--params params.json --activation sigmoid --output-activation sigmoid "
        "--loss half_sse --x 0.1,0.2 --y 0.4,0.6 --format html --out step.html",
    )
    ex.add_argument(
        "--example",
        choices=explainer.example_names(),
        help="a worked example shipped with jaxbp (its network, parameters, data "
        "and learning rate; its published numbers are checked, exit 1 if one fails) "
        "(default: none)",
    )
    ex.add_argument(
        "--sizes",
        type=_flags.sizes,
        help="layer widths, input first, e.g. 2,2,2 (default: from --params)",
    )
    _flags.add_net_flags(
        ex,
        activation="sigmoid",
        output_activation="identity",
        loss="softmax_cross_entropy",
    )
    ex.add_argument(
        "--params",
        type=pathlib.Path,
        metavar="FILE",
        help='JSON parameters: [{"w": [[...]], "b": [...]}, ...], w shaped '
        "(fan_in, fan_out) (default: none; then --seed draws them)",
    )
    ex.add_argument(
        "--seed",
        type=int,
        help="draw the parameters from this seed instead of --params (default: none)",
    )
    ex.add_argument(
        "--x",
        action="append",
        metavar="X1,X2,...",
        help="inputs of one example, comma-separated; repeat for a small batch "
        "(write --x=-1,2 when the first number is negative) (default: none)",
    )
    ex.add_argument(
        "--y",
        action="append",
        metavar="T1,T2,...",
        help="targets of one example (or one integer class label); repeat with --x "
        "(--y=-1,2 when the first is negative) (default: none)",
    )
    ex.add_argument(
        "--lr",
        type=_flags.positive_float,
        help="learning rate of the step (default: the example's, else 0.5)",
    )
    ex.add_argument(
        "--digits", type=int, default=8, help="decimals shown (default: %(default)s)"
    )
    ex.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text for the terminal, json, or one self-contained html page "
        "(default: %(default)s)",
    )
    ex.add_argument(
        "--out",
        type=pathlib.Path,
        metavar="FILE",
        help="write here (default: standard output)",
    )
    ex.set_defaults(func=run)


def run(args) -> int:
    """``jaxbp explain``: 0, or 1 if an example's published numbers do not reproduce."""
    try:
        output, ok = explain_page(
            example=args.example,
            sizes=args.sizes,
            activation=args.activation,
            output_activation=args.output_activation,
            loss=args.loss,
            params_path=args.params,
            seed=args.seed,
            x=args.x or (),
            y=args.y or (),
            lr=args.lr,
            output_format=args.format,
            digits=args.digits,
        )
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(str(e)) from None
    if args.out is None:
        sys.stdout.write(output)
    else:
        try:
            write_atomically(args.out, output.encode())
        except OSError as e:
            raise UsageError(_cannot_write(args.out, e)) from None
        print(f"wrote {args.out}")
    return 0 if ok else 1


def _cannot_write(path: pathlib.Path, error: OSError) -> str:
    """Why ``--out`` was not written, naming it rather than the temporary file."""
    if path.is_dir():
        return f"--out {path} is a folder; name a file in it, e.g. {path / 'step.html'}"
    if path.parent.exists() and not path.parent.is_dir():
        return f"--out {path}: {path.parent} is a file, not a folder"
    if not path.parent.exists():
        return f"--out {path}: the folder {path.parent} does not exist"
    return f"--out {path}: cannot write the file ({error.strerror or error})"


def explain_page(
    *,
    example: str | None = None,
    sizes: Sequence[int] | None = None,
    activation: str = "sigmoid",
    output_activation: str = "identity",
    loss: str = "softmax_cross_entropy",
    params_path=None,
    seed: int | None = None,
    x: Sequence[str] = (),
    y: Sequence[str] = (),
    lr: float | None = None,
    output_format: str = "text",
    digits: int = 8,
) -> tuple[str, bool]:
    """Builds the trace that the flags describe and renders it.

    Args:
      example: a shipped example (:func:`~jaxbp.explainer.examples.example_names`);
        it brings its own network, parameters, data and learning rate.
      sizes: the layer widths, input first (optional with ``params_path``).
      activation, output_activation, loss: the network, as for ``jaxbp train``.
      params_path: a JSON file ``[{"w": [[...]], "b": [...]}, ...]``.
      seed: draw the parameters with ``MLP.init`` from this seed instead.
      x: one string of comma-separated inputs per example.
      y: one string per example: the targets, or one integer class label.
      lr: the learning rate (default: the example's, else :data:`DEFAULT_LR`).
      output_format: ``"text"``, ``"json"`` or ``"html"``.
      digits: decimals of the numbers shown (text and HTML).

    Returns:
      ``(output, ok)``: the rendered trace, and whether every published number of the
      example was reproduced (always ``True`` without an example).

    Raises:
      ValueError: on any flag value or input that cannot make a trace, with a
        one-line message that says why.
    """
    if output_format not in FORMATS:
        raise ValueError(f"unknown format {output_format!r}; choose one of {FORMATS}")
    if not 1 <= digits <= 15:
        raise ValueError(f"--digits must be between 1 and 15, got {digits}")
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a positive number, got {lr}")
    ex = checks = None
    if example is not None:
        given = [
            flag
            for flag, value in (
                ("--sizes", sizes),
                ("--params", params_path),
                ("--seed", seed),
                ("--x", x or None),
                ("--y", y or None),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"--example {example} brings its own network, parameters and data; "
                f"leave out {', '.join(given)}"
            )
        ex = examples_lib.load_example(example)
        trace, checks = examples_lib.explain_example(example, lr=lr)
    else:
        try:
            net, params, xb, yb = _problem(
                sizes, activation, output_activation, loss, params_path, seed, x, y
            )
        except InputError as e:
            raise ValueError(f"--{e.field} {e}") from None
        trace = explain(net, params, xb, yb, lr=DEFAULT_LR if lr is None else lr)
    out = _render(trace, output_format, digits, example=ex, checks=checks)
    return out, checks is None or all(c.ok for c in checks)


def _render(trace, output_format: str, digits: int, *, example, checks) -> str:
    """The trace in ``output_format``, with the example's title and checks if any."""
    title = description = source = None
    if example is not None:
        title, description, source = example.title, example.description, example.source
    if output_format == "json":
        return render_json(trace, title=title, checks=checks)
    if output_format == "html":
        return render_html(
            trace,
            digits=digits,
            title=title,
            description=description,
            source=source,
            checks=checks,
        )
    return render_text(
        trace, digits=digits, title=title, description=description, checks=checks
    )


def _problem(sizes, activation, output_activation, loss, params_path, seed, x, y):
    """``(net, params, x, y)`` from the flags of a network the learner types in."""
    if (params_path is None) == (seed is None):
        raise ValueError(
            "give the parameters with --params FILE (JSON) or draw them with "
            "--seed N (one of the two)"
        )
    params = None
    if params_path is not None:
        params = read_params(params_path)
        from_file = sizes_of(params)
        if sizes is not None and tuple(sizes) != from_file:
            raise ValueError(
                f"--sizes {','.join(map(str, sizes))} but {params_path} holds a "
                f"{'-'.join(map(str, from_file))} network"
            )
        sizes = from_file
    elif sizes is None:
        raise ValueError("--seed needs --sizes (the layer widths, input first)")
    net = MLP(tuple(sizes), activation, output_activation, loss)
    if net.loss_fn.needs_logits and net.sizes[-1] == 1:
        raise ValueError(
            f"--loss {loss} over a single output is always 0 (the softmax of one "
            "number is 1); use --loss half_sse or mse, or two or more outputs"
        )
    if not x or not y:
        raise ValueError(
            "give the inputs and targets of each example with --x and --y, e.g. "
            "--x 0.1,0.2 --y 0.4,0.6 (repeat both for a small batch)"
        )
    if len(x) != len(y):
        raise ValueError(f"{len(x)} --x but {len(y)} --y: one of each per example")
    check_size(net, len(x))
    rows = []
    for n, text in enumerate(x):
        row = parse_numbers(text, field="x")
        if len(row) != net.sizes[0]:
            raise ValueError(
                f"--x {text!r} (example {n + 1}) has {len(row)} numbers but the "
                f"network has {net.sizes[0]} inputs"
            )
        rows.append(row)
    targets = [parse_targets(text, net.sizes[-1], field="y") for text in y]
    kinds = {isinstance(t, int) for t in targets}
    if len(kinds) > 1:
        raise ValueError("give every --y as targets or every --y as a class label")
    yb = np.asarray(targets, np.int32 if kinds == {True} else np.float64)
    if params is None:
        with jax.enable_x64(True):
            params = net.init(jax.random.key(seed), dtype=jnp.float64)
            params = [{k: np.asarray(v) for k, v in p.items()} for p in params]
    return net, params, np.asarray(rows, np.float64), yb
