"""What a learner types in: parameters as JSON, inputs and targets as number lists.

Every function here turns text into numbers or raises a ``ValueError`` whose message
names what is wrong and where (``params[1]["w"] row 0 has 3 numbers but row 1 has
2``), so that ``jaxbp explain`` can print it as one line. A number list that is wrong
raises an :class:`InputError` that carries the name of the argument it came in as
(its ``field``); whoever reads the arguments names it (the command line as a flag).
"""

import json
import math
import pathlib

import numpy as np


class InputError(ValueError):
    """A value that cannot be used, and the argument it came in as.

    Attributes:
      field: the argument's name, e.g. ``"x"``; the message (``str(error)``) says
        what is wrong with the value without naming it.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_params(obj, *, where: str = "params") -> list[dict[str, np.ndarray]]:
    """Validates the library's parameter list and returns it as float64 arrays.

    Args:
      obj: decoded JSON: a list with one ``{"w": [[...], ...], "b": [...]}`` per layer,
        ``w`` shaped ``(fan_in, fan_out)`` (row ``i`` holds the weights out of unit
        ``i``) and ``b`` shaped ``(fan_out,)``.
      where: how to name the parameters in messages (e.g. the file name).

    Returns:
      ``[{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]`` as float64 NumPy arrays.

    Raises:
      ValueError: on any other structure, a non-number, or layers that do not chain
        (``fan_out`` of one layer differs from ``fan_in`` of the next).

    Examples:
      >>> p = parse_params([{"w": [[0.5], [-1.0]], "b": [0.1]}])
      >>> p[0]["w"].shape, p[0]["b"].tolist()
      ((2, 1), [0.1])
    """
    if not isinstance(obj, list) or not obj:
        raise ValueError(
            f'{where} must be a non-empty list of {{"w": [[...]], "b": [...]}} '
            f"layers, got {_describe(obj)}"
        )
    params = []
    for l, layer in enumerate(obj):
        at = f"{where}[{l}]"
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            keys = sorted(layer) if isinstance(layer, dict) else _describe(layer)
            raise ValueError(f'{at} must have exactly the keys "w" and "b", got {keys}')
        w, b = layer["w"], layer["b"]
        if not isinstance(w, list) or not w or not all(isinstance(r, list) for r in w):
            raise ValueError(
                f'{at}["w"] must be a list of rows (fan_in rows of fan_out numbers), '
                f"got {_describe(w)}"
            )
        for i, row in enumerate(w):
            if len(row) != len(w[0]):
                raise ValueError(
                    f'{at}["w"] row {i} has {len(row)} numbers but row 0 has '
                    f"{len(w[0])}"
                )
        if not isinstance(b, list):
            raise ValueError(f'{at}["b"] must be a list of numbers, got {_describe(b)}')
        w_arr = _numbers(w, f'{at}["w"]')
        b_arr = _numbers(b, f'{at}["b"]')
        if w_arr.shape[1] == 0:
            raise ValueError(f'{at}["w"] has empty rows')
        if b_arr.shape != (w_arr.shape[1],):
            raise ValueError(
                f'{at}["b"] has {b_arr.size} numbers but {at}["w"] has '
                f"{w_arr.shape[1]} columns (one bias per unit it feeds)"
            )
        if params and params[-1]["w"].shape[1] != w_arr.shape[0]:
            raise ValueError(
                f'{at}["w"] has {w_arr.shape[0]} rows but {where}[{l - 1}] feeds '
                f"{params[-1]['w'].shape[1]} units: w is shaped (fan_in, fan_out)"
            )
        params.append({"w": w_arr, "b": b_arr})
    return params


def read_params(path) -> list[dict[str, np.ndarray]]:
    """Reads a JSON parameter file (see :func:`parse_params`).

    Raises:
      ValueError: if the file cannot be read, is not JSON, or is not a parameter list.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    return parse_params(obj, where=str(path))


def sizes_of(params: list[dict[str, np.ndarray]]) -> tuple[int, ...]:
    """The layer widths ``(n_0, ..., n_L)`` of a validated parameter list."""
    return (params[0]["w"].shape[0], *(p["w"].shape[1] for p in params))


def parse_numbers(text: str, *, field: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]``.

    Args:
      text: comma-separated numbers.
      field: the name of the argument ``text`` came in as.

    Raises:
      InputError: for ``field``, naming the item that is not a finite number.

    Examples:
      >>> parse_numbers("0.1, -2,3e-1", field="x")
      [0.1, -2.0, 0.3]
    """
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise InputError(
                field,
                f"{text!r}: {item.strip()!r} is not a number (give comma-separated "
                "numbers such as 0.1,0.2)",
            ) from None
        if not math.isfinite(value):
            raise InputError(field, f"{text!r}: {item.strip()} is not finite")
        values.append(value)
    return values


def parse_targets(text: str, num_outputs: int, *, field: str):
    """One example's targets: ``num_outputs`` numbers, or one integer class label.

    Args:
      text: comma-separated targets, or one class label.
      num_outputs: the network's outputs.
      field: the name of the argument ``text`` came in as.

    Returns:
      A float64 array ``(num_outputs,)`` or an ``int`` label.

    Raises:
      InputError: for ``field``, if the count fits neither form or the label is out
        of range.

    Examples:
      >>> parse_targets("0.4,0.6", 2, field="y").tolist()
      [0.4, 0.6]
      >>> parse_targets("1", 3, field="y")  # a class label
      1
    """
    values = parse_numbers(text, field=field)
    if len(values) == num_outputs:
        return np.asarray(values, np.float64)
    if len(values) == 1 and num_outputs > 1 and float(values[0]).is_integer():
        label = int(values[0])
        if not 0 <= label < num_outputs:
            raise InputError(
                field,
                f"{text!r}: class label {label} is out of range for {num_outputs} "
                "outputs",
            )
        return label
    raise InputError(
        field,
        f"{text!r} has {len(values)} numbers but the network has {num_outputs} "
        "outputs (give one target per output, or one integer class label)",
    )


def _numbers(obj, where: str) -> np.ndarray:
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must hold only numbers") from None
    if any(isinstance(v, bool) for v in np.asarray(obj, dtype=object).ravel()):
        raise ValueError(f"{where} must hold only numbers, not true/false")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where} holds a value that is not finite")
    return arr


def _describe(obj) -> str:
    if isinstance(obj, list):
        return f"a list of {len(obj)}"
    if isinstance(obj, dict):
        return "an object"
    return f"{type(obj).__name__} {obj!r}"[:60]
