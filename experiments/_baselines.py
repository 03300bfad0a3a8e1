"""Library-free training epochs that ``bench_speed.py`` races jaxbp against.

Every baseline trains the same thing: an MLP with plain SGD (``lr`` 0.1) on the mean
softmax cross-entropy over each batch, float32, one fresh shuffle per epoch (its cost
included), ``N // B`` batches per epoch with the remainder dropped. Each ``make_*``
function returns a zero-argument callable that trains one epoch and returns only when
the work is done (``block_until_ready`` or a synchronous library), so wall-clock time
around it is the epoch time.

* :func:`make_numpy_epoch`: manual backprop in NumPy, preallocated buffers, ``out=``.
* :func:`make_torch_epoch`: PyTorch eager, autograd and ``torch.optim.SGD``, or the
  same with the model compiled by ``torch.compile`` (``compile=True``).
* :func:`make_scan_epoch`: a bare ``jax.jit`` + ``jax.lax.scan`` epoch written by
  hand (``jax.value_and_grad``, ``tree_map`` SGD), shuffling by permuting indices and
  gathering each batch inside the scan (``shuffle="indices"``), or by gathering the
  whole shuffled training set up front (``shuffle="dataset"``).
* :func:`make_loop_epoch`: the same step, jitted, called from a Python loop.

:func:`make_gemm_bound_epoch` is not a competitor but the bound: only the matrix
products of one training step, at the same shapes, scanned over an epoch.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Epoch = Callable[[], None]


def _glorot_or_he(rng: np.random.Generator, sizes, activation):
    """NumPy float32 parameters: He normal for ReLU, Glorot uniform otherwise."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        if activation == "relu":
            w = rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_in, fan_out))
        else:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
        params.append({"w": w.astype(np.float32), "b": np.zeros(fan_out, np.float32)})
    return params


# --------------------------------------------------------------------------- NumPy
def make_numpy_epoch(
    x: np.ndarray,
    y: np.ndarray,
    sizes: Sequence[int],
    activation: str,
    batch_size: int,
    *,
    lr: float = 0.1,
    seed: int = 0,
) -> Epoch:
    """One epoch of manual backprop in NumPy: the fastest float32 code we could write.

    The per-epoch shuffle is ``rng.permutation`` and each batch a gather with
    ``np.take(..., out=)``. Every activation, delta and gradient lives in a buffer
    allocated once; the learning rate and the ``1/B`` of the mean are folded into the
    output delta (the rule is linear in it), so each weight gradient already *is* the
    SGD update and is subtracted in place.
    """
    if activation not in ("sigmoid", "relu"):
        raise ValueError(f"numpy baseline supports sigmoid and relu, not {activation}")
    rng = np.random.default_rng(seed)
    params = _glorot_or_he(rng, sizes, activation)
    n, depth, b = len(x), len(sizes) - 1, batch_size
    num_batches = n // b
    f32 = np.float32
    xb = np.empty((b, sizes[0]), f32)
    yb = np.empty(b, y.dtype)
    acts = [xb] + [np.empty((b, m), f32) for m in sizes[1:]]  # a_0 .. a_L (logits)
    deltas = [np.empty((b, m), f32) for m in sizes[1:]]  # delta_1 .. delta_L
    grads_w = [np.empty_like(p["w"]) for p in params]
    grads_b = [np.empty_like(p["b"]) for p in params]
    rowmax = np.empty((b, 1), f32)
    rowsum = np.empty((b, 1), f32)
    rows = np.arange(b)
    scale = f32(lr / b)
    losses = np.empty(num_batches, f32)

    def step(i: int) -> None:
        # forward: z_l = a_{l-1} W_l + b_l ; a_l = f(z_l) (identity on the last layer)
        for l in range(depth):
            z = acts[l + 1]
            np.matmul(acts[l], params[l]["w"], out=z)
            z += params[l]["b"]
            if l < depth - 1:
                if activation == "sigmoid":  # 1 / (1 + exp(-z)), in place
                    np.negative(z, out=z)
                    np.exp(z, out=z)
                    z += 1
                    np.reciprocal(z, out=z)
                else:
                    np.maximum(z, 0, out=z)
        # softmax cross-entropy: delta_L = (softmax(z_L) - onehot(y)) * lr / B
        p = deltas[-1]
        np.max(acts[-1], axis=1, keepdims=True, out=rowmax)
        np.subtract(acts[-1], rowmax, out=p)
        np.exp(p, out=p)
        np.sum(p, axis=1, keepdims=True, out=rowsum)
        p /= rowsum
        losses[i] = -np.mean(np.log(p[rows, yb]))
        p[rows, yb] -= 1
        p *= scale
        # backward: dW_l = a_{l-1}^T delta_l ;
        # delta_{l-1} = (delta_l W_l^T) * f'(z_{l-1})
        for l in range(depth - 1, -1, -1):
            np.matmul(acts[l].T, deltas[l], out=grads_w[l])
            np.sum(deltas[l], axis=0, out=grads_b[l])
            if l > 0:  # no input gradient for the first layer
                back, a = deltas[l - 1], acts[l]
                np.matmul(deltas[l], params[l]["w"].T, out=back)
                if activation == "sigmoid":  # f' = a (1 - a)
                    back *= a
                    np.subtract(1, a, out=a)  # a_l is dead after its dW_{l+1}
                    back *= a
                else:  # f' = [z > 0] = [a > 0]
                    np.copyto(back, 0, where=a <= 0)
        for l in range(depth):  # SGD, the gradient already carries -lr
            params[l]["w"] -= grads_w[l]
            params[l]["b"] -= grads_b[l]

    def epoch() -> None:
        order = rng.permutation(n)
        for i in range(num_batches):
            idx = order[i * b : (i + 1) * b]
            np.take(x, idx, axis=0, out=xb)
            np.take(y, idx, out=yb)
            step(i)

    epoch.losses = losses  # for a sanity check that it trains
    return epoch


# --------------------------------------------------------------------------- PyTorch
def make_torch_epoch(
    x: np.ndarray,
    y: np.ndarray,
    sizes: Sequence[int],
    activation: str,
    batch_size: int,
    *,
    lr: float = 0.1,
    seed: int = 0,
    threads: int | None = None,
    compile: bool = False,
) -> Epoch:
    """One epoch in PyTorch: ``nn.Linear`` layers, autograd, ``optim.SGD``.

    The shuffle is ``torch.randperm`` per epoch and each batch an index gather. With
    ``compile=True`` the model is ``torch.compile``-d (its forward and, through
    AOTAutograd, its backward; the optimizer stays eager); the first call compiles.
    """
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]
    layers = []
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if l < len(sizes) - 2:
            layers.append(act())
    return make_torch_model_epoch(
        nn.Sequential(*layers), x, y, batch_size, lr=lr, compile=compile
    )


def make_torch_model_epoch(
    model, x: np.ndarray, y: np.ndarray, batch_size: int, *, lr: float, compile: bool
) -> Epoch:
    """One epoch of any PyTorch ``model`` on ``(x, y)``: ``torch.randperm`` shuffle,
    an index gather per batch, cross-entropy, autograd and ``torch.optim.SGD``; with
    ``compile=True`` the model is ``torch.compile``-d (the first call compiles)."""
    import torch
    from torch import nn

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if compile:
        model = torch.compile(model)
    xt = torch.from_numpy(np.array(x, np.float32))  # a writable copy
    yt = torch.from_numpy(np.asarray(y, np.int64))
    n, b = len(x), batch_size
    num_batches = n // b
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        order = torch.randperm(n)
        for i in range(num_batches):
            idx = order[i * b : (i + 1) * b]
            loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


# --------------------------------------------------------------------------- JAX
def _jax_params(sizes, activation, seed):
    return jax.device_put(_glorot_or_he(np.random.default_rng(seed), sizes, activation))


def _jax_step(activation: str, lr: float):
    """The hand-written step: ``(params, (x, y)) -> (params, loss)``."""
    act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[activation]

    def loss_fn(params, xb, yb):
        a = xb
        for l, layer in enumerate(params):
            z = a @ layer["w"] + layer["b"]
            a = act(z) if l < len(params) - 1 else z
        logp = jax.nn.log_softmax(a)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def step(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    return step


def _shuffle(key, n):
    """The epoch order ``jaxbp.train`` draws: the argsort of ``n`` random words.

    The same work as the library's shuffle, so that comparing with the reference
    measures what the library adds, not a different shuffle.
    """
    return jnp.argsort(jax.random.bits(key, (n,), jnp.uint32))


def make_scan_epoch(
    x: jax.Array,
    y: jax.Array,
    sizes: Sequence[int],
    activation: str,
    batch_size: int,
    *,
    shuffle: str = "indices",
    lr: float = 0.1,
    seed: int = 0,
) -> Epoch:
    """One epoch as one ``jit`` + ``lax.scan`` program, no library code.

    Args:
      x: device-resident inputs ``(N, n_0)``; ``y`` labels ``(N,)``.
      shuffle: ``"indices"`` permutes the indices and gathers each batch in the scan
        body; ``"dataset"`` gathers the whole shuffled training set before the scan.
    """
    if shuffle not in ("indices", "dataset"):
        raise ValueError(f"shuffle must be 'indices' or 'dataset', got {shuffle!r}")
    step = _jax_step(activation, lr)
    num_batches = x.shape[0] // batch_size

    @jax.jit
    def train_epoch(params, key, x, y):
        key, sub = jax.random.split(key)
        order = _shuffle(sub, x.shape[0])[: num_batches * batch_size]
        order = order.reshape(num_batches, batch_size)
        if shuffle == "dataset":  # one (N, n_0) copy of the shuffled set
            params, losses = jax.lax.scan(step, params, (x[order], y[order]))
        else:  # each step gathers only its own batch

            def body(params, idx):
                return step(params, (x[idx], y[idx]))

            params, losses = jax.lax.scan(body, params, order)
        return params, key, losses

    carry = [_jax_params(sizes, activation, seed), jax.random.key(seed)]

    def epoch() -> None:
        params, key, losses = train_epoch(*carry, x, y)
        jax.block_until_ready(losses)
        carry[:] = [params, key]

    return epoch


def make_loop_epoch(
    x: jax.Array,
    y: jax.Array,
    sizes: Sequence[int],
    activation: str,
    batch_size: int,
    *,
    lr: float = 0.1,
    seed: int = 0,
) -> Epoch:
    """One epoch as a Python loop of jitted steps (one dispatch per batch).

    The permutation is drawn on the device by a jitted function; each step receives the
    whole permutation and its batch number and gathers its batch itself, so a step is
    exactly one dispatch.
    """
    step = _jax_step(activation, lr)
    num_batches = x.shape[0] // batch_size

    @jax.jit
    def shuffle(key):
        key, sub = jax.random.split(key)
        order = _shuffle(sub, x.shape[0])[: num_batches * batch_size]
        return key, order.reshape(num_batches, batch_size)

    @jax.jit
    def train_step(params, x, y, order, i):
        idx = order[i]
        return step(params, (x[idx], y[idx]))

    carry = [_jax_params(sizes, activation, seed), jax.random.key(seed)]

    def epoch() -> None:
        params, key = carry
        key, order = shuffle(key)
        for i in range(num_batches):
            params, loss = train_step(params, x, y, order, np.int32(i))
        jax.block_until_ready(params)
        carry[:] = [params, key]

    return epoch


# --------------------------------------------------------------------------- bound
def make_gemm_bound_epoch(
    x: jax.Array, sizes: Sequence[int], batch_size: int, *, seed: int = 0
) -> Epoch:
    """The matrix products of one training step per batch, scanned over an epoch.

    Per batch ``a_0`` (consecutive rows of ``x``: no shuffle, no gather) it runs
    exactly the products a training step of this MLP runs, at the same shapes:
    forward ``z_l = a_{l-1} W_l`` for every layer, weight gradients
    ``a_{l-1}^T delta_l`` for every layer, backward deltas ``delta_l W_l^T`` for every
    layer but the first. Nothing else: no bias, activation, loss or shuffle; the
    output ``z_L`` stands in for ``delta_L`` and each ``z_l`` for ``a_l``. The weight
    gradients are summed into the scan's carry, the one elementwise pass kept so
    that XLA cannot drop the products (a training step's update makes the same
    pass). Its epoch time is the least any implementation of the algorithm can take
    with these GEMMs on this machine.
    """
    rng = np.random.default_rng(seed)
    # small weights keep the un-activated products near 1 over a whole epoch
    ws = [
        jnp.asarray(rng.normal(0, 1 / fan_in, (fan_in, fan_out)), jnp.float32)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    num_batches = x.shape[0] // batch_size
    depth = len(ws)

    @jax.jit
    def epoch(ws, x):
        def body(grads, i):
            # batch i in place, no copy of the data set
            acts = [jax.lax.dynamic_slice_in_dim(x, i * batch_size, batch_size)]
            for w in ws:  # forward: z_l = a_{l-1} W_l
                acts.append(acts[-1] @ w)
            delta, new = acts[-1], [None] * depth
            for l in range(depth - 1, -1, -1):
                new[l] = grads[l] + acts[l].T @ delta  # weight gradient
                if l > 0:  # backward delta; none for the input
                    delta = delta @ ws[l].T
            return new, None

        zeros = [jnp.zeros_like(w) for w in ws]
        return jax.lax.scan(body, zeros, jnp.arange(num_batches))[0]

    def run() -> None:
        jax.block_until_ready(epoch(ws, x))

    return run
