"""One training step of a small MLP, with every number named: :func:`explain`.

The trace is a record of what a learner writes down when doing backpropagation by hand:
the forward pass unit by unit, the loss and its per-output terms, the error signal
(delta) of every unit, for every weight and bias the chain-rule factors and their
product, the library's hand-derived gradient beside ``jax.grad``'s, the parameters after
one gradient-descent step and the loss after it.

Every number comes from the library: the forward cache and the deltas from
:meth:`jaxbp.MLP.deltas` (the delta rule of :mod:`jaxbp.backward`), the loss from
:meth:`jaxbp.MLP.loss`, the gradient from :meth:`jaxbp.MLP.manual_grad` and the
derivative of each activation from :mod:`jaxbp.activations`. What the trace adds is
arithmetic on those numbers, the way a learner would do it, and checks that it agrees:

* the chain rule, weight by weight: ``dE/dW5 = dE/do1 · do1/dz3 · dz3/dW5``, whose
  product is compared with the library's gradient;
* for a hidden unit, the **sum over paths**, one term per unit it feeds
  (``dE/dh1 = dE/dz3·W5 + dE/dz4·W7``), and the **delta rule in matrix form**
  (``delta_l = (delta_{l+1} W_{l+1}^T) ⊙ f'(z_l)``), which must give the same number:
  both are eq. 7 of Rumelhart, Hinton & Williams (1986), whose eqs. 1-8 the trace
  follows from the forward pass to the weight change;
* the sum over every route from a hidden unit to the output (the sum over paths
  unrolled through all later layers).

Names follow the textbook convention of the 2-2-2 worked example: inputs ``x1, x2,
...``; pre-activations ``z1, z2, ...`` numbered over all non-input units, layer by
layer; hidden units ``h1, h2, ...`` (``h_k = f(z_k)``); outputs ``o1, o2, ...``;
targets ``t1, t2, ...``; weights ``W1, W2, ...`` numbered layer by layer, by the unit
they feed and then by the unit they come from (``W1: x1 -> h1``, ``W2: x2 -> h1``,
``W3: x1 -> h2``); one bias per unit, ``b_k`` adding into ``z_k``.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.mlp import MLP

#: The largest network a trace is drawn for: units in any layer, weight layers, and
#: examples in the batch. Beyond that the page is too long to read.
MAX_UNITS = 8
MAX_LAYERS = 4
MAX_BATCH = 4

Values = tuple[float, ...]  # one number per example of the batch

# f'(z) of each activation, written with the unit's activation {a} and
# pre-activation {z}; the values come from jaxbp.activations.
_DERIV_FORMULAS = {
    "identity": "1",
    "sigmoid": "{a} (1 - {a})",
    "tanh": "1 - {a}^2",
    "relu": "1 if {z} > 0 else 0",
    "leaky_relu": "1 if {z} > 0 else 0.01",
    "elu": "1 if {z} > 0 else {a} + 1",
    "softplus": "sigmoid({z})",
    "gelu": "Phi({z}) + {z} phi({z})",
}


@dataclasses.dataclass(frozen=True)
class Factor:
    """One factor of a chain-rule product.

    Attributes:
      symbol: the derivative it is, e.g. ``"do1/dz3"``.
      formula: how it is computed, e.g. ``"o1 (1 - o1)"``.
      values: its value for each example of the batch.
    """

    symbol: str
    formula: str
    values: Values


@dataclasses.dataclass(frozen=True)
class PathTerm:
    """One term of ``dE/dh_j = sum_k dE/dz_k · W_jk``: the path through unit ``k``.

    Attributes:
      via: the pre-activation the path goes through, e.g. ``"z3"``.
      weight: the weight on the way, e.g. ``"W5"``.
      weight_value: its value.
      delta: ``dE/dz_k`` per example (the library's delta of unit ``k``).
      product: ``dE/dz_k · W_jk`` per example.
    """

    via: str
    weight: str
    weight_value: float
    delta: Values
    product: Values


@dataclasses.dataclass(frozen=True)
class Unit:
    """One non-input unit: its forward values and its error signal.

    Attributes:
      name: the unit, ``"h1"`` (hidden) or ``"o1"`` (output).
      z_name: its pre-activation, ``"z1"``.
      bias: the name of its bias, ``"b1"``.
      layer: its layer, 1 to L.
      index: its position in the layer, from 0.
      weights: the names of the weights into it, one per unit of the layer below.
      sources: the names of those units (``"x1"``, ``"h1"``, ...).
      equation: ``"z3 = W5 h1 + W6 h2 + b3"``.
      activation: the activation's name.
      derivative: the formula of ``f'(z)`` for this unit, e.g. ``"h1 (1 - h1)"``.
      z: the pre-activation per example.
      a: the activation per example.
      fprime: ``f'(z)`` per example (from :mod:`jaxbp.activations`).
      delta: ``dE/dz`` per example (the library's delta rule).
      dE_da: ``dE/da`` per example; ``None`` for the output of a loss that takes the
        logits (softmax cross-entropy), whose delta is computed in one fused step.
      paths: for a hidden unit, the terms of the sum over the units it feeds.
      matrix_form: for a hidden unit, ``(delta_{l+1} W_{l+1}^T)`` for this unit, per
        example: the matrix-form value of ``dE/da``.
      routes: for a hidden unit, the number of routes from it to the output units.
      routes_sum: the sum over those routes of the product of the factors along each
        (``W · f'(z) · W · ... · dE/dz_out``), per example.
    """

    name: str
    z_name: str
    bias: str
    layer: int
    index: int
    weights: tuple[str, ...]
    sources: tuple[str, ...]
    equation: str
    activation: str
    derivative: str
    z: Values
    a: Values
    fprime: Values
    delta: Values
    dE_da: Values | None
    paths: tuple[PathTerm, ...] = ()
    matrix_form: Values | None = None
    routes: int = 0
    routes_sum: Values | None = None


@dataclasses.dataclass(frozen=True)
class Param:
    """One weight or bias: its chain rule, its gradients and its update.

    Attributes:
      name: ``"W5"`` or ``"b3"``.
      kind: ``"w"`` or ``"b"``.
      layer: the layer, 1 to L (``params[layer - 1]``).
      row: the index of the source unit (``w[row, col]``); ``None`` for a bias.
      col: the index of the unit it feeds.
      source: the unit it comes from (``"h1"``), ``None`` for a bias.
      target: the unit it feeds (``"o1"``).
      value: its value before the step.
      factors: the chain-rule factors of ``dE/d<name>``.
      chain: the product of the factors, per example.
      manual: the library's hand-derived gradient (summed over the batch).
      autodiff: ``jax.grad``'s gradient.
      updated: the value after the step, ``value - lr * manual``.
    """

    name: str
    kind: str
    layer: int
    row: int | None
    col: int
    source: str | None
    target: str
    value: float
    factors: tuple[Factor, ...]
    chain: Values
    manual: float
    autodiff: float
    updated: float


@dataclasses.dataclass(frozen=True)
class Layer:
    """One weight layer in matrix form; every array is ``(B, n_l)`` unless noted.

    Attributes:
      index: 1 to L.
      activation: the activation of this layer.
      w: the weights ``(n_{l-1}, n_l)``.
      b: the biases ``(n_l,)``.
      z, a, fprime, delta: pre-activations, activations, ``f'(z)`` and
        ``delta = dE/dz`` of the batch.
      back: ``delta_{l+1} W_{l+1}^T`` for a hidden layer, ``None`` for the output.
      units: the :class:`Unit` records of this layer.
    """

    index: int
    activation: str
    w: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    z: tuple[Values, ...]
    a: tuple[Values, ...]
    fprime: tuple[Values, ...]
    delta: tuple[Values, ...]
    back: tuple[Values, ...] | None
    units: tuple[Unit, ...]


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """The loss and its per-output terms.

    Attributes:
      name: the objective, e.g. ``"half_sse"``.
      formula: the per-example loss as a sum of per-output terms.
      term_formula: the term of each output, e.g. ``"1/2 (o1 - t1)^2"``.
      terms: the per-output terms, ``(B, n_L)``.
      per_example: each example's loss (the library's), ``(B,)``.
      value: ``E``, the mean over the batch (the library's :meth:`~jaxbp.MLP.loss`).
      probs: ``softmax(o)`` per example for softmax cross-entropy, else ``None``.
    """

    name: str
    formula: str
    term_formula: tuple[str, ...]
    terms: tuple[Values, ...]
    per_example: Values
    value: float
    probs: tuple[Values, ...] | None


@dataclasses.dataclass(frozen=True)
class Trace:
    """One gradient-descent step of a small MLP, every number named.

    Build it with :func:`explain`; render it with
    :func:`jaxbp.render.render_text`, :func:`~jaxbp.render.render_json` or
    :func:`~jaxbp.render.render_html`.

    Attributes:
      network: ``str(net)``.
      sizes, activation, output_activation, objective: the network's spec.
      lr: the learning rate of the step.
      inputs: the input names ``("x1", ...)``.
      targets: the target names ``("t1", ...)``.
      x: the inputs ``(B, n_0)``.
      y: the float targets ``(B, n_L)`` (integer labels made one-hot).
      layers: one :class:`Layer` per weight layer.
      loss: the :class:`LossTerms`.
      params: every weight and then every bias, layer by layer, in name order.
      loss_after: ``E`` after the step.
      max_abs_manual_vs_autodiff: the largest ``|manual - jax.grad|`` of any parameter.
      max_abs_chain_vs_manual: the largest ``|chain-rule product - manual|``.
      max_abs_paths_vs_matrix: the largest difference between the sum over paths,
        the matrix form and the sum over routes, over every hidden unit.
    """

    network: str
    sizes: tuple[int, ...]
    activation: str
    output_activation: str
    objective: str
    lr: float
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    x: tuple[Values, ...]
    y: tuple[Values, ...]
    layers: tuple[Layer, ...]
    loss: LossTerms
    params: tuple[Param, ...]
    loss_after: float
    max_abs_manual_vs_autodiff: float
    max_abs_chain_vs_manual: float
    max_abs_paths_vs_matrix: float

    @property
    def batch_size(self) -> int:
        """The number of examples ``B``."""
        return len(self.x)

    @property
    def units(self) -> tuple[Unit, ...]:
        """Every non-input unit, layer by layer."""
        return tuple(u for layer in self.layers for u in layer.units)

    def param(self, name: str) -> Param:
        """The :class:`Param` called ``name`` (``"W5"``, ``"b1"``)."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no parameter {name!r} in {self.network}")

    def updated_params(self) -> list[dict[str, np.ndarray]]:
        """The parameters after the step, in the library's ``[{"w", "b"}]`` form."""
        out = [
            {"w": np.array(layer.w, dtype=np.float64), "b": np.array(layer.b)}
            for layer in self.layers
        ]
        for p in self.params:
            leaf = out[p.layer - 1][p.kind]
            leaf[(p.row, p.col) if p.kind == "w" else p.col] = p.updated
        return out

    def value(self, name: str, example: int = 0) -> float:
        """One number of the trace by its textbook name.

        Args:
          name: a unit or input (``"h1"``, ``"o2"``, ``"x1"``, ``"t1"``), a
            pre-activation (``"z3"``), a parameter (``"W5"``, ``"b1"``), a derivative
            (``"dE/dW5"``, ``"dE/db1"``, ``"dE/dz3"``, ``"dE/dh1"``), an updated
            parameter (``"new W5"``), the loss ``"E"``, a per-output term (``"E1"``)
            or the loss after the step ``"E after"``.
          example: which example of the batch, for per-example values.

        Returns:
          The number as a Python float.

        Raises:
          KeyError: if the name is not in the trace.
        """
        if name == "E":
            return self.loss.value
        if name == "E after":
            return self.loss_after
        if name.startswith("new "):
            return self.param(name[4:]).updated
        if name.startswith("dE/d"):
            what = name[4:]
            for p in self.params:
                if p.name == what:
                    return p.manual
            for u in self.units:
                if what == u.z_name:
                    return u.delta[example]
                if what == u.name and u.dE_da is not None:
                    return u.dE_da[example]
            raise KeyError(f"no derivative {name!r} in {self.network}")
        if name in self.inputs:
            return self.x[example][self.inputs.index(name)]
        if name in self.targets:
            return self.y[example][self.targets.index(name)]
        if name[:1] == "E" and name[1:].isdigit():
            return self.loss.terms[example][int(name[1:]) - 1]
        for u in self.units:
            if name == u.name:
                return u.a[example]
            if name == u.z_name:
                return u.z[example]
        return self.param(name).value

    def to_dict(self) -> dict:
        """The whole trace as plain JSON-ready Python values."""
        record = dataclasses.asdict(self)
        record["batch_size"] = self.batch_size
        record["loss_terms"] = record.pop("loss")
        return record


# ----------------------------------------------------------------------- names
def _names(sizes: tuple[int, ...]) -> dict:
    """Textbook names of every unit, pre-activation, weight and bias."""
    depth = len(sizes) - 1
    units, zs, weights, biases = [], [], [], []
    z_count = h_count = w_count = 0
    for l in range(1, depth + 1):
        fan_in, fan_out = sizes[l - 1], sizes[l]
        if l == depth:
            units.append([f"o{j + 1}" for j in range(fan_out)])
        else:
            units.append([f"h{h_count + j + 1}" for j in range(fan_out)])
            h_count += fan_out
        zs.append([f"z{z_count + j + 1}" for j in range(fan_out)])
        biases.append([f"b{z_count + j + 1}" for j in range(fan_out)])
        z_count += fan_out
        # W numbered by the unit fed (j), then by the unit it comes from (i).
        weights.append(
            [[f"W{w_count + j * fan_in + i + 1}" for j in range(fan_out)]
             for i in range(fan_in)]
        )  # fmt: skip
        w_count += fan_in * fan_out
    return {
        "inputs": [f"x{i + 1}" for i in range(sizes[0])],
        "targets": [f"t{k + 1}" for k in range(sizes[-1])],
        "units": units,
        "z": zs,
        "w": weights,
        "b": biases,
    }


# ----------------------------------------------------------------------- checks
def check_size(net: MLP, batch_size: int = 1) -> None:
    """Refuses a network or batch too large to read as a trace.

    Raises:
      ValueError: naming the layer or count that is too large, and the limit.
    """
    if net.depth > MAX_LAYERS:
        raise ValueError(
            f"{net} has {net.depth} weight layers; a trace is readable up to "
            f"{MAX_LAYERS} (every weight gets its own chain rule)"
        )
    for l, size in enumerate(net.sizes):
        if size > MAX_UNITS:
            where = "the input" if l == 0 else f"layer {l}"
            raise ValueError(
                f"{where} of {net} has {size} units; a trace is readable up to "
                f"{MAX_UNITS} units per layer (a {net.num_params}-parameter trace "
                "would be pages of numbers)"
            )
    if batch_size > MAX_BATCH:
        raise ValueError(
            f"the batch has {batch_size} examples; a trace shows up to {MAX_BATCH} "
            "side by side"
        )


def _as_batch(net: MLP, x, y):
    """``x`` as ``(B, n_0)`` float64; ``y`` as labels ``(B,)`` or ``(B, n_L)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    y = np.asarray(y)
    if y.dtype == object or not (
        np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)
    ):
        raise TypeError(f"y must be numbers, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y[None]
    if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and y.size == net.sizes[-1]:
        y = y[None, :]
    if np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    return x, y


# ----------------------------------------------------------------------- explain
def explain(net: MLP, params, x, y, *, lr: float = 0.5) -> Trace:
    """Traces one gradient-descent step on one example (or a small batch).

    Computes in float64 whatever the dtype of ``params``, so that the numbers can be
    checked against a textbook to eight decimals.

    Args:
      net: the network spec, at most :data:`MAX_UNITS` units per layer and
        :data:`MAX_LAYERS` weight layers.
      params: ``[{"w": (n_{l-1}, n_l), "b": (n_l,)}, ...]`` (arrays or nested lists).
      x: one example ``(n_0,)`` or a batch ``(B, n_0)``, ``B <=`` :data:`MAX_BATCH`.
      y: the targets ``(n_L,)`` or ``(B, n_L)``, or integer class labels ``(B,)``.
      lr: the learning rate of the step ``W <- W - lr dE/dW``.

    Returns:
      The :class:`Trace`.

    Raises:
      ValueError, TypeError: on a network or batch too large to read, or parameters,
        inputs or targets that do not fit the network (the message names which).

    Examples:
      >>> import jaxbp
      >>> net = jaxbp.MLP((2, 2, 2), "sigmoid", "sigmoid", "half_sse")
      >>> params = [{"w": [[0.3, 0.4], [0.25, 0.35]], "b": [0.0, 0.0]},
      ...           {"w": [[0.45, 0.7], [0.4, 0.6]], "b": [0.0, 0.0]}]
      >>> trace = jaxbp.explain(net, params, [0.1, 0.2], [0.4, 0.6], lr=0.5)
      >>> round(trace.value("h1"), 8), round(trace.value("E"), 8)
      (0.51998934, 0.0239719)
      >>> [f.symbol for f in trace.param("W5").factors]
      ['dE/do1', 'do1/dz3', 'dz3/dW5']
      >>> round(trace.value("new W5"), 8)
      0.43703857
    """
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"lr must be a number, got {lr!r}") from None
    if not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number, got {lr!r}")
    x, y = _as_batch(net, x, y)
    check_size(net, x.shape[0])
    if x.shape[0] == 0:
        raise ValueError("the batch is empty: give at least one example")
    with jax.enable_x64(True):
        params = _float64_params(params)
        net.check_params(params)
        xb, targets = net.check_batch(params, x, y)
        cache, deltas = net.deltas(params, xb, targets, batch_mean=True)
        num = {
            "a": [np.asarray(a) for a in cache.a],
            "z": [np.asarray(z) for z in cache.z],
            "delta": [np.asarray(d) for d in deltas],
            "w": [np.asarray(p["w"]) for p in params],
            "b": [np.asarray(p["b"]) for p in params],
        }
        num["fprime"] = [
            np.asarray((net.output if l == net.depth - 1 else net.hidden).deriv(z, a))
            for l, (z, a) in enumerate(zip(cache.z, cache.a[1:], strict=True))
        ]
        batch = x.shape[0]
        # dE/da_L of the mean loss E = (1/B) sum_n l_n (dE/dz_L for fused losses).
        num["grad_out"] = np.asarray(net.loss_fn.grad_out(cache.a[-1], targets)) / batch
        num["targets"] = np.asarray(targets)
        num["loss"] = float(net.loss(params, xb, targets))
        num["per_example"] = np.asarray(net.per_example_loss(params, xb, targets))
        manual = net.manual_grad(params, xb, targets)
        autodiff = jax.grad(net.loss)(params, xb, targets)
        updated = jax.tree.map(lambda p, g: p - lr * g, params, manual)
        num["loss_after"] = float(net.loss(updated, xb, targets))
        num["manual"] = [{k: np.asarray(v) for k, v in g.items()} for g in manual]
        num["autodiff"] = [{k: np.asarray(v) for k, v in g.items()} for g in autodiff]
        num["updated"] = [{k: np.asarray(v) for k, v in p.items()} for p in updated]
        if net.loss_fn.needs_logits:
            num["probs"] = np.asarray(jax.nn.softmax(cache.a[-1], axis=-1))
    return _build(net, lr, num)


def _float64_params(params) -> list[dict]:
    if not isinstance(params, list | tuple):
        raise TypeError(
            "params must be a list of {'w', 'b'} dicts, got " + type(params).__name__
        )
    out = []
    for l, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            raise TypeError(f"params[{l}] must be a dict with keys 'w' and 'b'")
        try:
            out.append({k: jnp.asarray(np.asarray(layer[k], np.float64)) for k in "wb"})
        except (TypeError, ValueError) as e:
            raise ValueError(f"params[{l}] does not hold numbers: {e}") from None
    return out


def _t(values) -> tuple:
    """A NumPy array as nested tuples of Python floats."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return float(values)
    return tuple(_t(v) for v in values)


def _build(net: MLP, lr: float, num: dict) -> Trace:
    """The :class:`Trace` from the library's numbers ``num`` (NumPy, float64)."""
    names = _names(net.sizes)
    depth = net.depth
    batch = num["a"][0].shape[0]
    loss = _loss_terms(net, names, num)
    layers, params = [], []
    for l in range(depth):
        is_out = l == depth - 1
        act = net.output if is_out else net.hidden
        w, z, a = num["w"][l], num["z"][l], num["a"][l + 1]
        fprime, delta = num["fprime"][l], num["delta"][l]
        # The matrix form of dE/da for a hidden layer: delta_{l+1} W_{l+1}^T.
        back = None if is_out else num["delta"][l + 1] @ num["w"][l + 1].T
        units = [_unit(net, names, num, back, l, j) for j in range(net.sizes[l + 1])]
        layers.append(
            Layer(
                index=l + 1,
                activation=act.name,
                w=_t(w),
                b=_t(num["b"][l]),
                z=_t(z),
                a=_t(a),
                fprime=_t(fprime),
                delta=_t(delta),
                back=None if back is None else _t(back),
                units=tuple(units),
            )
        )
    # Every weight, then every bias, layer by layer, in name order.
    for l, layer in enumerate(layers):
        for j, unit in enumerate(layer.units):
            for i, source in enumerate(unit.sources):
                params.append(_param(net, num, l, i, j, unit, source, batch))
    for l, layer in enumerate(layers):
        for j, unit in enumerate(layer.units):
            params.append(_param(net, num, l, None, j, unit, None, batch))
    params.sort(key=lambda p: (p.kind == "b", int(p.name[1:])))
    return Trace(
        network=str(net),
        sizes=net.sizes,
        activation=net.activation,
        output_activation=net.output_activation,
        objective=net.objective,
        lr=float(lr),
        inputs=tuple(names["inputs"]),
        targets=tuple(names["targets"]),
        x=_t(num["a"][0]),
        y=_t(num["targets"]),
        layers=tuple(layers),
        loss=loss,
        params=tuple(params),
        loss_after=num["loss_after"],
        max_abs_manual_vs_autodiff=max(abs(p.manual - p.autodiff) for p in params),
        max_abs_chain_vs_manual=max(abs(sum(p.chain) - p.manual) for p in params),
        max_abs_paths_vs_matrix=max(
            _paths_error(u) for layer in layers for u in layer.units
        ),
    )


def _unit(net: MLP, names: dict, num: dict, back, l: int, j: int) -> Unit:
    """Unit ``j`` of layer ``l`` (0-based); ``back``: the layer's matrix-form dE/da."""
    is_out = l == net.depth - 1
    act = net.output if is_out else net.hidden
    name, z_name, b_name = names["units"][l][j], names["z"][l][j], names["b"][l][j]
    sources = names["inputs"] if l == 0 else names["units"][l - 1]
    w_names = tuple(names["w"][l][i][j] for i in range(len(sources)))
    terms = " + ".join(f"{wn} {src}" for wn, src in zip(w_names, sources, strict=True))
    extra = {}
    if is_out:
        # dE/do of the loss (none for softmax cross-entropy: dE/dz comes fused).
        fused = net.loss_fn.needs_logits
        extra["dE_da"] = None if fused else _t(num["grad_out"][:, j])
    else:
        # dE/dh_j = sum_k dE/dz_k W_jk: one path through each unit k it feeds.
        delta_next, w_next = num["delta"][l + 1], num["w"][l + 1]
        paths = tuple(
            PathTerm(
                via=names["z"][l + 1][k],
                weight=names["w"][l + 1][j][k],
                weight_value=float(w_next[j, k]),
                delta=_t(delta_next[:, k]),
                product=_t(delta_next[:, k] * w_next[j, k]),
            )
            for k in range(w_next.shape[1])
        )
        routes, route_total = _routes(num, l, j)
        extra = {
            "dE_da": _t(np.sum([np.asarray(p.product) for p in paths], axis=0)),
            "paths": paths,
            "matrix_form": _t(back[:, j]),
            "routes": routes,
            "routes_sum": _t(route_total),
        }
    return Unit(
        name=name,
        z_name=z_name,
        bias=b_name,
        layer=l + 1,
        index=j,
        weights=w_names,
        sources=tuple(sources),
        equation=f"{z_name} = {terms} + {b_name}",
        activation=act.name,
        derivative=_DERIV_FORMULAS[act.name].format(a=name, z=z_name),
        z=_t(num["z"][l][:, j]),
        a=_t(num["a"][l + 1][:, j]),
        fprime=_t(num["fprime"][l][:, j]),
        delta=_t(num["delta"][l][:, j]),
        **extra,
    )


def _paths_error(unit: Unit) -> float:
    """How far the sum over paths is from the matrix form, the delta rule and routes."""
    if unit.matrix_form is None:
        return 0.0
    total = np.asarray(unit.dE_da)
    return max(
        float(np.max(np.abs(total - np.asarray(unit.matrix_form)))),
        # delta_l = (delta_{l+1} W^T) * f'(z_l), the library's delta.
        float(np.max(np.abs(total * np.asarray(unit.fprime) - np.asarray(unit.delta)))),
        float(np.max(np.abs(np.asarray(unit.routes_sum) - total))),
    )


def _routes(num: dict, l: int, j: int) -> tuple[int, np.ndarray]:
    """Every route from hidden unit ``j`` of layer ``l`` (0-based) to the output.

    A route ``j -> k_1 -> ... -> k_m`` contributes
    ``W[j, k_1] f'(z_{k_1}) W[k_1, k_2] ... W[k_{m-1}, k_m] dE/dz_{k_m}``; the sum over
    all routes is ``dE/da_j``.
    """
    widths = [w.shape[1] for w in num["w"][l + 1 :]]
    total = np.zeros(num["a"][0].shape[0])
    count = 0
    for route in itertools.product(*(range(n) for n in widths)):
        prod = np.ones_like(total)
        prev = j
        for step, k in enumerate(route):
            layer = l + 1 + step
            prod = prod * num["w"][layer][prev, k]
            if step < len(route) - 1:
                prod = prod * num["fprime"][layer][:, k]
            prev = k
        total = total + prod * num["delta"][-1][:, prev]
        count += 1
    return count, total


def _loss_terms(net: MLP, names: dict, num: dict) -> LossTerms:
    out = num["a"][-1]
    t = num["targets"]
    n_out = out.shape[1]
    outs, tgts = names["units"][-1], names["targets"]
    probs = num.get("probs")
    if net.objective == "half_sse":
        terms = 0.5 * (out - t) ** 2
        term_formula = [f"1/2 ({o} - {tk})^2" for o, tk in zip(outs, tgts, strict=True)]
    elif net.objective == "mse":
        terms = (out - t) ** 2 / n_out
        term_formula = [
            f"({o} - {tk})^2 / {n_out}" if n_out > 1 else f"({o} - {tk})^2"
            for o, tk in zip(outs, tgts, strict=True)
        ]
    elif net.objective == "softmax_cross_entropy":
        # Terms by the logarithm of the softmax of the library's output.
        with jax.enable_x64(True):
            log_p = np.asarray(jax.nn.log_softmax(jnp.asarray(out), axis=-1))
        terms = -t * log_p
        term_formula = [f"-{tk} log p{k + 1}" for k, tk in enumerate(tgts)]
    else:  # pragma: no cover - MLP rejects unknown losses
        raise ValueError(f"no per-output terms for loss {net.objective!r}")
    if not np.allclose(terms.sum(axis=1), num["per_example"], rtol=1e-12, atol=1e-15):
        raise AssertionError("per-output terms do not add up to the library's loss")
    if net.objective == "softmax_cross_entropy":
        formula = "l = -sum_k t_k log p_k,  p = softmax(o)"
    else:
        formula = "l = " + " + ".join(term_formula)
    return LossTerms(
        name=net.objective,
        formula=formula,
        term_formula=tuple(term_formula),
        terms=_t(terms),
        per_example=_t(num["per_example"]),
        value=num["loss"],
        probs=None if probs is None else _t(probs),
    )


def _out_factor_formula(net: MLP, o: str, t: str, k: int, batch: int) -> str:
    """The formula of ``dE/do_k`` (``dE/dz`` for softmax cross-entropy)."""
    n_out = net.sizes[-1]
    if net.objective == "half_sse":
        formula, scale = f"{o} - {t}", batch
    elif net.objective == "mse":
        formula, scale = f"2 ({o} - {t})", n_out * batch
    else:
        formula, scale = f"p{k + 1} - {t}", batch
    if scale > 1:
        formula = (
            f"({formula}) / {scale}"
            if net.objective != "mse"
            else (f"{formula} / {scale}")
        )
    return formula


def _param(net, num, l, i, j, unit: Unit, source, batch) -> Param:
    """The weight ``w[i, j]`` of layer ``l`` (the bias ``b[j]`` if ``i`` is None)."""
    is_out = l == net.depth - 1
    fused = net.loss_fn.needs_logits
    kind = "b" if i is None else "w"
    name = unit.bias if i is None else unit.weights[i]
    factors = []
    if is_out:
        t = f"t{j + 1}"
        formula = _out_factor_formula(net, unit.name, t, j, batch)
        if fused:
            factors.append(
                Factor(f"dE/d{unit.z_name}", formula, _t(num["grad_out"][:, j]))
            )
        else:
            factors.append(Factor(f"dE/d{unit.name}", formula, unit.dE_da))
    else:
        formula = " + ".join(f"dE/d{p.via}·{p.weight}" for p in unit.paths)
        factors.append(Factor(f"dE/d{unit.name}", formula, unit.dE_da))
    if not (is_out and fused):
        factors.append(
            Factor(f"d{unit.name}/d{unit.z_name}", unit.derivative, unit.fprime)
        )
    if kind == "w":
        factors.append(Factor(f"d{unit.z_name}/d{name}", source, _t(num["a"][l][:, i])))
        index = (i, j)
    else:
        factors.append(Factor(f"d{unit.z_name}/d{name}", "1", (1.0,) * batch))
        index = (j,)
    chain = np.prod([np.asarray(f.values) for f in factors], axis=0)
    return Param(
        name=name,
        kind=kind,
        layer=l + 1,
        row=i,
        col=j,
        source=source,
        target=unit.name,
        value=float(num[kind][l][index]),
        factors=tuple(factors),
        chain=_t(chain),
        manual=float(num["manual"][l][kind][index]),
        autodiff=float(num["autodiff"][l][kind][index]),
        updated=float(num["updated"][l][kind][index]),
    )
