"""Networks by name: presets and a compact spec string that a user can type.

A spec is a comma-separated list of layers, each a name with optional arguments in
parentheses, the text form of a :class:`~jaxbp.Sequential`'s layers::

    reshape(28,28,1),conv(20,5),maxpool(2),conv(50,5),maxpool(2),flatten,
    dense(500),relu,dense(10)

=============================================  ======================================
spec                                           layer
=============================================  ======================================
``dense(N)``, ``dense(N,init=glorot)``         :class:`~jaxbp.layers.Dense`
``conv(F,K)``, ``conv(F,5x3,same,stride=2)``   :class:`~jaxbp.layers.Conv2D` (NHWC)
``maxpool(W)``, ``avgpool(W,stride=S)``        :class:`~jaxbp.layers.MaxPool2D`,
                                               :class:`~jaxbp.layers.AvgPool2D`
``flatten``, ``reshape(28,28,1)``              :class:`~jaxbp.layers.Flatten`,
                                               :class:`~jaxbp.layers.Reshape`
``bn``, ``bn(momentum=0.99,eps=0.001)``        :class:`~jaxbp.layers.BatchNorm`
``ln``, ``ln(eps=0.001)``                      :class:`~jaxbp.layers.LayerNorm`
``dropout(0.25)``                              :class:`~jaxbp.layers.Dropout`
``res(conv(32,3,same),bn,relu)``               :class:`~jaxbp.layers.Residual`
``relu``, ``tanh``, ... (every activation)     :class:`~jaxbp.layers.Activation`
=============================================  ======================================

Sizes are ``K`` or ``KxL`` (rows x columns); padding is ``valid`` (the default),
``same``, or explicit: ``padding=1`` (every side), ``padding=1x2`` (rows, columns) or
``padding=0:1x1:0`` (``lo:hi`` per axis). :func:`to_spec` writes layers back as the
one canonical spec (lower case, no spaces, defaults left out), so
``to_spec(parse(s))`` is a fixed point and ``parse(to_spec(layers)) == layers``.

:data:`PRESETS` names a few networks for MNIST-sized ``(784,)`` inputs.

Examples:
  >>> layers = parse("reshape(28, 28, 1), conv(8, 3, SAME), relu, flatten, dense(10)")
  >>> to_spec(layers)
  'reshape(28,28,1),conv(8,3,same),relu,flatten,dense(10)'
  >>> canonical("lenet") == PRESETS["lenet"]
  True
"""

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from jaxbp.activations import ACTIVATIONS
from jaxbp.layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    Reshape,
    Residual,
)

#: Named networks for flat 28x28 inputs (MNIST, Fashion-MNIST), as canonical specs.
PRESETS = {
    # Caffe's LeNet (examples/mnist/lenet_train_test.prototxt): two 5x5 convolutions
    # of 20 and 50 features, each followed by 2x2 max-pooling, then a 500-unit ReLU
    # layer and the 10 logits.
    "lenet": (
        "reshape(28,28,1),conv(20,5),maxpool(2),conv(50,5),maxpool(2),flatten,"
        "dense(500),relu,dense(10)"
    ),
    # BatchNorm and a residual block (He et al. 2016, their "basic block" at 32
    # features) between two poolings, then a dropout-regularised dense head.
    "bn-res": (
        "reshape(28,28,1),conv(32,3,same),bn,relu,maxpool(2),"
        "res(conv(32,3,same),bn,relu,conv(32,3,same),bn),relu,maxpool(2),flatten,"
        "dense(128),relu,dropout(0.25),dense(10)"
    ),
}

#: One line on each preset, for ``jaxbp train --help``.
PRESET_DESCRIPTIONS = {
    "lenet": "Caffe's LeNet: conv 5x5x20, max-pool 2, conv 5x5x50, max-pool 2, "
    "dense 500, ReLU, dense 10",
    "bn-res": "conv 3x3x32, BatchNorm, ReLU, max-pool 2, a residual block of two "
    "such convolutions, max-pool 2, dense 128, dropout 0.25, dense 10",
}


class SpecError(ValueError):
    """A spec string that does not parse; the message names the bad token."""


# --------------------------------------------------------------------- tokens
_TOKEN = re.compile(r"\s*(?:([(),=])|([^(),=\s]+))")


class _Token(NamedTuple):
    text: str
    at: int  # 0-based character offset in the spec


def _tokens(spec: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(spec):
        match = _TOKEN.match(spec, pos)
        if match is None:  # only trailing whitespace is left
            break
        text = match[1] or match[2]
        tokens.append(_Token(text, match.start(1 if match[1] else 2)))
        pos = match.end()
    return tokens


# --------------------------------------------------------------------- values
def _int(text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"{text!r} is not a non-negative integer")
    return int(text)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _pair(text: str) -> int | tuple[int, int]:
    """``5`` -> 5, ``5x3`` -> (5, 3)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return _int(parts[0])
    if len(parts) == 2:
        return (_int(parts[0]), _int(parts[1]))
    raise ValueError(f"{text!r} is not a size K or KxL")


def _padding(text: str):
    """``valid``, ``same``, ``1``, ``1x2`` or ``0:1x1:0``."""
    if text.lower() in ("valid", "same"):
        return text.upper()
    axes = text.lower().split("x")
    axes = axes * 2 if len(axes) == 1 else axes
    pads = [axis.split(":") for axis in axes]
    if len(pads) != 2 or not all(
        len(pad) in (1, 2) and all(re.fullmatch(r"\d+", v) for v in pad) for pad in pads
    ):
        raise ValueError(
            f"{text!r} is not a padding: valid, same, P, PxQ or LO:HIxLO:HI"
        )
    return tuple((int(pad[0]), int(pad[-1])) for pad in pads)


def _pair_str(value) -> str:
    a, b = (value, value) if isinstance(value, int) else value
    return str(a) if a == b else f"{a}x{b}"


def _padding_str(padding) -> str:
    if isinstance(padding, str):
        return padding.lower()
    axes = [str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in padding]
    return axes[0] if axes[0] == axes[1] and ":" not in axes[0] else "x".join(axes)


def _float_str(value) -> str:
    return repr(float(value))


# --------------------------------------------------------------------- layers
class _Kind(NamedTuple):
    """How one spec name becomes a layer: its form for messages, the builder, the
    positional argument count it allows and the keywords it takes."""

    form: str
    build: Callable
    positional: tuple[int, int]  # (min, max); max -1: any number
    keywords: tuple[str, ...] = ()


def _conv(features, kernel, padding=None, *, stride=None, init=None):
    return Conv2D(
        _int(features),
        _pair(kernel),
        stride=1 if stride is None else _pair(stride),
        padding="VALID" if padding is None else _padding(padding),
        weight_init="he" if init is None else init,
    )


def _pool(cls):
    def build(window, padding=None, *, stride=None):
        return cls(
            _pair(window),
            stride=None if stride is None else _pair(stride),
            padding="VALID" if padding is None else _padding(padding),
        )

    return build


def _bn(*, momentum=None, eps=None):
    return BatchNorm(
        momentum=0.9 if momentum is None else _float(momentum),
        eps=1e-5 if eps is None else _float(eps),
    )


def _dropout(rate=None):
    if rate is None:
        raise ValueError("dropout needs its rate")
    return Dropout(_float(rate))


def _ln(*, eps=None):
    return LayerNorm(eps=1e-5 if eps is None else _float(eps))


_KINDS: dict[str, _Kind] = {
    "dense": _Kind(
        "dense(N[,init=glorot])",
        lambda n, *, init=None: Dense(_int(n), weight_init=init or "he"),
        (1, 1),
        ("init",),
    ),
    "conv": _Kind(
        "conv(F,K[,same][,stride=S])",
        _conv,
        (2, 3),
        ("stride", "padding", "init"),
    ),
    "maxpool": _Kind(
        "maxpool(W[,same][,stride=S])",
        _pool(MaxPool2D),
        (1, 2),
        ("stride", "padding"),
    ),
    "avgpool": _Kind(
        "avgpool(W[,same][,stride=S])",
        _pool(AvgPool2D),
        (1, 2),
        ("stride", "padding"),
    ),
    "flatten": _Kind("flatten", Flatten, (0, 0)),
    "reshape": _Kind(
        "reshape(D,...)", lambda *dims: Reshape(tuple(map(_int, dims))), (1, -1)
    ),
    "bn": _Kind("bn[(momentum=M,eps=E)]", _bn, (0, 0), ("momentum", "eps")),
    "ln": _Kind("ln[(eps=E)]", _ln, (0, 0), ("eps",)),
    "dropout": _Kind("dropout(P)", _dropout, (0, 1), ("rate",)),
    "res": _Kind("res(LAYER,...)", None, (1, -1)),
}
_ALIASES = {
    "conv2d": "conv",
    "max_pool": "maxpool",
    "avg_pool": "avgpool",
    "batchnorm": "bn",
    "layernorm": "ln",
    "residual": "res",
}


def _valid() -> str:
    """What a layer can be, for error messages."""
    forms = [kind.form for kind in _KINDS.values()]
    return ", ".join(forms + list(ACTIVATIONS))


# --------------------------------------------------------------------- parser
class _Parser:
    """Recursive descent over the tokens of one spec."""

    def __init__(self, spec: str):
        self.spec = spec
        self.tokens = _tokens(spec)
        self.i = 0

    def error(self, message: str, token: _Token | None = None) -> SpecError:
        if token is None:
            where = "at the end"
        else:
            where = f"at {token.text!r} (character {token.at + 1})"
        return SpecError(f"spec {self.spec!r}, {where}: {message}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token | None:
        token = self.peek()
        self.i += token is not None
        return token

    def expect(self, text: str, what: str) -> None:
        token = self.take()
        if token is None or token.text != text:
            raise self.error(f"expected {what}", token)

    def layers(self, closing: str | None) -> list:
        layers = [self.layer()]
        while (token := self.peek()) is not None and token.text == ",":
            self.take()
            layers.append(self.layer())
        token = self.peek()
        if closing is None and token is not None:
            raise self.error("expected ',' between layers", token)
        if closing is not None:
            self.expect(closing, f"',' or '{closing}'")
        return layers

    def layer(self):
        token = self.take()
        if token is None or token.text in "(),=":
            raise self.error(f"expected a layer ({_valid()})", token)
        name = _ALIASES.get(token.text.lower(), token.text.lower())
        if name not in _KINDS and name not in ACTIVATIONS:
            raise self.error(
                f"unknown layer; a layer is one of {_valid()}; a preset ("
                f"{', '.join(PRESETS)}) is a whole model, not a layer",
                token,
            )
        has_args = (nxt := self.peek()) is not None and nxt.text == "("
        if has_args:
            self.take()
        if name == "res":
            if not has_args:
                raise self.error("res needs its block: res(LAYER,...)", token)
            return Residual(tuple(self.layers(")")))
        args, kwargs = self.arguments() if has_args else ([], {})
        if name in ACTIVATIONS:
            kind = _Kind(name, lambda: Activation(name), (0, 0))
        else:
            kind = _KINDS[name]
        lo, hi = kind.positional
        unknown = sorted(set(kwargs) - set(kind.keywords))
        if unknown:
            raise self.error(
                f"unknown argument {unknown[0]!r}; write {kind.form}", token
            )
        if len(args) < lo or (hi >= 0 and len(args) > hi):
            takes = (
                f"{lo}"
                if lo == hi
                else f"{lo} to {hi}"
                if hi >= 0
                else f"at least {lo}"
            )
            raise self.error(
                f"{name} takes {takes} positional arguments, got {len(args)}; write "
                f"{kind.form}",
                token,
            )
        if name in ("conv", "maxpool", "avgpool") and len(args) == lo + 1:
            if "padding" in kwargs:
                raise self.error(f"padding given twice; write {kind.form}", token)
        try:
            return kind.build(*args, **kwargs)
        except (ValueError, TypeError) as e:
            raise self.error(f"{e}; write {kind.form}", token) from None

    def arguments(self) -> tuple[list[str], dict[str, str]]:
        args: list[str] = []
        kwargs: dict[str, str] = {}
        if (token := self.peek()) is not None and token.text == ")":
            self.take()
            return args, kwargs
        while True:
            token = self.take()
            if token is None or token.text in "(),=":
                raise self.error("expected an argument", token)
            if (nxt := self.peek()) is not None and nxt.text == "=":
                self.take()
                value = self.take()
                if value is None or value.text in "(),=":
                    raise self.error(f"expected a value for {token.text}", value)
                kwargs[token.text.lower()] = value.text
            elif kwargs:
                raise self.error("a positional argument after a keyword", token)
            else:
                args.append(token.text)
            token = self.take()
            if token is None or token.text not in ",)":
                raise self.error("expected ',' or ')'", token)
            if token.text == ")":
                return args, kwargs


def parse(spec: str) -> tuple:
    """The layers of a spec string (see the module docstring for the grammar).

    Args:
      spec: e.g. ``"reshape(28,28,1),conv(20,5),maxpool(2),flatten,dense(10)"``;
        names are case-insensitive and spaces are ignored.

    Returns:
      A tuple of :mod:`jaxbp.layers` layers.

    Raises:
      SpecError: one line naming the bad token, its position and what is valid.
    """
    if not isinstance(spec, str):
        raise SpecError(f"a spec is a string, got {type(spec).__name__}")
    parser = _Parser(spec)
    if not parser.tokens:
        raise SpecError(f"spec {spec!r} is empty; a layer is one of {_valid()}")
    return tuple(parser.layers(None))


# --------------------------------------------------------------------- to_spec
def _layer_spec(layer) -> str:
    """One layer as its canonical spec token."""

    def call(name, *args, **kwargs):
        parts = [*args, *(f"{k}={v}" for k, v in kwargs.items() if v is not None)]
        return f"{name}({','.join(parts)})" if parts else name

    if isinstance(layer, Activation):
        return layer.name
    if isinstance(layer, Dense):
        init = None if layer.weight_init == "he" else layer.weight_init
        return call("dense", str(layer.features), init=init)
    if isinstance(layer, Conv2D):
        padding = layer.padding
        return call(
            "conv",
            str(layer.features),
            _pair_str(layer.kernel_size),
            *([padding.lower()] if padding == "SAME" else []),
            stride=None if layer.stride == (1, 1) else _pair_str(layer.stride),
            padding=None if isinstance(padding, str) else _padding_str(padding),
            init=None if layer.weight_init == "he" else layer.weight_init,
        )
    if isinstance(layer, MaxPool2D | AvgPool2D):
        name = "maxpool" if isinstance(layer, MaxPool2D) else "avgpool"
        padding = layer.padding
        return call(
            name,
            _pair_str(layer.window),
            *([padding.lower()] if padding == "SAME" else []),
            stride=None if layer.stride == layer.window else _pair_str(layer.stride),
            padding=None if isinstance(padding, str) else _padding_str(padding),
        )
    if isinstance(layer, Flatten):
        return "flatten"
    if isinstance(layer, Reshape):
        return call("reshape", *map(str, layer.shape))
    if isinstance(layer, BatchNorm):
        return call(
            "bn",
            momentum=None if layer.momentum == 0.9 else _float_str(layer.momentum),
            eps=None if layer.eps == 1e-5 else _float_str(layer.eps),
        )
    if isinstance(layer, LayerNorm):
        return call("ln", eps=None if layer.eps == 1e-5 else _float_str(layer.eps))
    if isinstance(layer, Dropout):
        return call("dropout", _float_str(layer.rate))
    if isinstance(layer, Residual):
        return f"res({to_spec(layer.block)})"
    raise ValueError(f"{layer} has no spec form: to_spec knows {_valid()}")


def to_spec(layers: Sequence) -> str:
    """The canonical spec string of ``layers``: ``parse(to_spec(layers)) == layers``.

    Raises:
      ValueError: for a layer the spec grammar cannot write (one defined outside
        :mod:`jaxbp.layers`).
    """
    return ",".join(_layer_spec(layer) for layer in layers)


def canonical(model: str) -> str:
    """The canonical spec of a preset name or a spec string.

    Raises:
      SpecError: if ``model`` is neither.
    """
    if isinstance(model, str) and model.strip().lower() in PRESETS:
        return PRESETS[model.strip().lower()]
    return to_spec(parse(model))


def preset_name(spec: str) -> str | None:
    """The preset whose canonical spec is ``spec``, or ``None``."""
    return next((name for name, s in PRESETS.items() if s == spec), None)
