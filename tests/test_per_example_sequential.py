"""Per-example gradients, norms and DP-SGD clipping for Sequential networks.

Every manual result is compared with ``jax.vmap(jax.grad(...))`` of each example's
loss, read off the batch's own forward pass (so Dropout's masks are the batch's):
the definition, independent of the library's ``method="autodiff"``.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_harness import forbid_autodiff, random_array

from jaxbp import per_example, per_example_layers
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
from jaxbp.sequential import Sequential

BATCH = 5
CLOSE = {
    "float64": {"rtol": 1e-10, "atol": 1e-13},
    "float32": {"rtol": 2e-4, "atol": 1e-6},
}

# name: (layers, input_shape, objective)
NETS = {
    "dense": (
        [Dense(5), Activation("tanh"), Dense(4), Activation("relu"), Dense(3)],
        (6,),
        "softmax_cross_entropy",
    ),
    "layernorm": (
        [
            Reshape((2, 3, 2)),
            LayerNorm(),  # over the 2 channels of each of the 2 x 3 positions
            Activation("elu"),
            Flatten(),
            Dense(5),
            LayerNorm(),
            Activation("gelu"),
            Dense(3),
        ],
        (12,),
        "mse",
    ),
    # The first convolution (49 positions) takes its norms from materialised
    # gradients, the second (4 positions, 18 x 4 weights) by the Gram form.
    "conv": (
        [
            Conv2D(3, 3),
            Activation("relu"),
            MaxPool2D(2),
            Conv2D(4, (2, 3), stride=2, padding="SAME"),
            AvgPool2D((2, 1)),
            Flatten(),
            Dense(3),
        ],
        (9, 9, 2),
        "softmax_cross_entropy",
    ),
    "residual": (
        [
            Dense(5),
            Residual([Dense(5), Activation("tanh"), LayerNorm(), Dense(5)]),
            Activation("relu"),
            Residual(Residual(Dense(5))),
            Dense(3),
        ],
        (6,),
        "softmax_cross_entropy",
    ),
    "dropout": (
        [
            Dense(6),
            Activation("relu"),
            Dropout(0.5),
            Residual([Dense(6), Activation("sigmoid"), Dropout(0.3)]),
            Dense(3),
        ],
        (6,),
        "half_sse",
    ),
}
# (net, dtype, what is checked): per-example grads and norms always; "clip": the
# clipped mean and the batch gradient too; "autodiff": also the library's
# method="autodiff" (on one net where it runs on batches of one, and one where
# Dropout makes it read each loss off the whole batch's forward pass). float32
# checks fewer things, loosely.
CASES = [
    ("dense", "float64", ("autodiff",)),
    ("conv", "float64", ("clip",)),
    ("layernorm", "float64", ()),
    ("residual", "float64", ("clip",)),
    ("dropout", "float64", ("clip", "autodiff")),
    ("conv", "float32", ()),
]


def _setup(name, dtype, seed=0):
    """The net, parameters shifted off their initial values, a batch, a key."""
    layers, input_shape, objective = NETS[name]
    net = Sequential(layers, input_shape=input_shape, objective=objective)
    params = net.init(jax.random.key(seed), dtype=jnp.dtype(dtype))
    leaves, treedef = jax.tree.flatten(params)
    params = jax.tree.unflatten(
        treedef,
        [
            leaf + 0.2 * random_array(leaf.shape, dtype, seed + 10 + i)
            for i, leaf in enumerate(leaves)
        ],
    )
    x = random_array((BATCH, *input_shape), dtype, seed + 1)
    rng = np.random.default_rng(seed + 2)
    if net.loss_fn.needs_logits:
        y = jnp.asarray(rng.integers(0, net.num_outputs, BATCH), jnp.int32)
    else:
        y = jnp.asarray(rng.uniform(0.05, 0.95, (BATCH, net.num_outputs)), dtype)
    key = jax.random.key(seed + 3) if name == "dropout" else None
    return net, params, x, y, key


def _reference(net, params, x, y, key):
    """``vmap(grad)`` of each example's loss in the batch's forward pass."""

    def example_loss(p, i):
        return net.per_example_loss(p, x, y, key=key)[i]

    return jax.vmap(jax.grad(example_loss), in_axes=(None, 0))(
        params, jnp.arange(x.shape[0])
    )


def _sq(per_ex):
    return jax.tree.map(lambda g: jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1), per_ex)


def _flat(per_ex):
    leaves = jax.tree.leaves(per_ex)
    return np.concatenate([np.asarray(g).reshape(g.shape[0], -1) for g in leaves], 1)


def _params_flat(grads):
    return np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])


@pytest.mark.parametrize(
    ("name", "dtype", "checks"), CASES, ids=[f"{n}-{d}" for n, d, _ in CASES]
)
def test_manual_equals_vmap_grad(name, dtype, checks):
    with jax.enable_x64(dtype == "float64"):
        net, params, x, y, key = _setup(name, dtype)

        @jax.jit
        def compute(params, x, y, key):
            sq = per_example.per_example_sq_norms(net, params, x, y, dropout_key=key)
            norms = per_example.per_example_grad_norms(
                net, params, x, y, dropout_key=key
            )
            out = {
                "ref": _reference(net, params, x, y, key),
                "manual": per_example.per_example_grads(
                    net, params, x, y, dropout_key=key
                ),
                "sq": sq,
                "norms": norms,
            }
            clip = out["clip"] = jnp.median(norms)  # examples on both sides of C
            methods = ("manual", "autodiff") if "autodiff" in checks else ("manual",)
            if "clip" in checks:
                out["batch_grad"] = net.manual_grad(params, x, y, key=key)
                out["loss"] = net.loss(params, x, y, key=key)
                out["clipped"] = [
                    per_example.clipped_grad(
                        net, params, x, y, l2_norm_clip=clip, method=m, dropout_key=key
                    )
                    for m in methods
                ]
            if "autodiff" in checks:
                out["autodiff"] = per_example.per_example_grads(
                    net, params, x, y, method="autodiff", dropout_key=key
                )
            return out

        out = compute(params, x, y, key)
        close = CLOSE[dtype]
        ref = out["ref"]
        assert jax.tree.map(jnp.shape, out["manual"]) == jax.tree.map(
            lambda p: (BATCH, *p.shape), params
        )
        chex.assert_trees_all_equal_dtypes(out["manual"], ref)
        chex.assert_trees_all_close(out["manual"], ref, **close)
        chex.assert_trees_all_close(out["sq"], _sq(ref), **close)
        ref_norms = np.linalg.norm(_flat(ref), axis=1)
        np.testing.assert_allclose(out["norms"], ref_norms, **close)
        if "autodiff" in checks:
            chex.assert_trees_all_close(out["autodiff"], ref, **close)
        if "clip" not in checks:
            return
        chex.assert_trees_all_close(
            jax.tree.map(lambda g: jnp.mean(g, 0), out["manual"]),
            out["batch_grad"],
            **close,
        )
        # the clipped mean (and the autodiff one) against the reference's, in NumPy
        clip = float(out["clip"])
        assert (ref_norms > clip).sum() >= 2 and (ref_norms < clip).sum() >= 2
        g = _flat(ref)
        expected = (g * np.minimum(1.0, clip / ref_norms)[:, None]).mean(0)
        for loss, grads in out["clipped"]:
            chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
            np.testing.assert_allclose(_params_flat(grads), expected, **close)
            np.testing.assert_allclose(loss, out["loss"], **close)


def test_conv_norm_methods_agree():
    # LeNet's convolutions: materialise the first, the Gram form for the second
    assert per_example_layers.conv_norm_method(24 * 24, 5 * 5 * 1, 20) == "materialise"
    assert per_example_layers.conv_norm_method(8 * 8, 5 * 5 * 20, 50) == "gram"
    with jax.enable_x64(True):
        patches = random_array((3, 7, 12), "float64", 0)
        delta = random_array((3, 7, 5), "float64", 1)
        g = np.einsum("btk,btf->bkf", patches, delta)
        expected = np.sum(g * g, axis=(1, 2))
        for method in per_example_layers.CONV_NORM_METHODS:
            got = per_example_layers.conv_weight_sq_norms(patches, delta, method=method)
            np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="method must be one of"):
        per_example_layers.conv_weight_sq_norms(patches, delta, method="ghost")
    with pytest.raises(ValueError, match="norm_method must be one of"):
        per_example_layers.conv2d_rule("ghost")


def test_huge_clip_is_batch_gradient():
    with jax.enable_x64(True):
        net, params, x, y, _ = _setup("residual", "float64")

        @jax.jit
        def compute(params, x, y):
            clipped = per_example.clipped_grad(net, params, x, y, l2_norm_clip=np.inf)
            return clipped, net.value_and_manual_grad(params, x, y)

        clipped, expected = compute(params, x, y)
        chex.assert_trees_all_close(clipped, expected, **CLOSE["float64"])


def test_dp_step_trains():
    net, params, x, y, key = _setup("dropout", "float32")
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=1.0, noise_multiplier=0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, key):
        noise_key, dropout_key = jax.random.split(key)
        loss, grads = dp(params, x, y, noise_key, dropout_key=dropout_key)
        return jax.tree.map(lambda p, g: p - 1.0 * g, params, grads), loss

    losses, key = [], jax.random.key(0)
    for _ in range(40):
        key, step_key = jax.random.split(key)
        params, loss = step(params, step_key)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


# --- refusals
def _batchnorm_nets():
    top = Sequential(
        [Dense(4), BatchNorm(), Activation("relu"), Dense(2)], input_shape=(3,)
    )
    nested = Sequential(
        [Dense(4), Residual([Dense(4), BatchNorm()]), Dense(2)], input_shape=(3,)
    )
    return [
        (top, "layer 2 of 4, BatchNorm()"),
        (nested, r"layer 2 of 3, Residual\(.*\), block layer 2 of 2, BatchNorm\(\)"),
    ]


def _all_entry_points(net, params, x, y):
    yield lambda: per_example.check_per_example(net)
    for method in per_example.METHODS:
        yield lambda m=method: per_example.per_example_grads(
            net, params, x, y, method=m
        )
        yield lambda m=method: per_example.clipped_grad(
            net, params, x, y, l2_norm_clip=1.0, method=m
        )
        yield lambda m=method: per_example.make_dp_value_and_grad(
            net, l2_norm_clip=1.0, method=m
        )
    yield lambda: per_example.per_example_sq_norms(net, params, x, y)
    yield lambda: per_example.per_example_grad_norms(net, params, x, y)


@pytest.mark.parametrize("case", [0, 1])
def test_batchnorm_is_refused(case):
    net, where = _batchnorm_nets()[case]
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((4, 3)), jnp.array([0, 1, 1, 0])
    for call in _all_entry_points(net, params, x, y):
        with pytest.raises(ValueError, match="per-example gradients are not defined"):
            call()
    with pytest.raises(ValueError) as info:
        per_example.check_per_example(net)
    message = str(info.value)
    assert pytest.importorskip("re").search(where, message), message
    for phrase in ("whole batch", "not private", "LayerNorm"):
        assert phrase in message


@dataclasses.dataclass(frozen=True)
class _Scale(Dense):
    """A layer type jaxbp has no rule for (a subclass of Dense would inherit one)."""


@dataclasses.dataclass(frozen=True)
class _Unknown:
    features: int = 2

    def output_shape(self, input_shape):
        return (self.features,)

    def init(self, key, input_shape, dtype):
        return {"w": jnp.ones((input_shape[0], self.features), dtype)}

    def init_state(self, input_shape, dtype):
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        return x @ params["w"], x, state

    def backward(self, params, cache, dy):
        return {"w": cache.T @ dy}, dy @ params["w"].T


def test_unknown_layer_is_refused_and_can_be_registered(monkeypatch):
    net = Sequential([Dense(3), _Unknown()], input_shape=(3,))
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((4, 3)), jnp.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="no per-example rule for _Unknown"):
        per_example.per_example_grad_norms(net, params, x, y)
    # a subclass of a known layer uses its rule
    per_example.check_per_example(Sequential([_Scale(2)], input_shape=(3,)))
    monkeypatch.setitem(
        per_example_layers._RULES,
        _Unknown,
        per_example_layers.Rule(
            grads=lambda layer, p, x, dy: {"w": jnp.einsum("bi,bo->bio", x, dy)},
            sq_norms=lambda layer, p, x, dy: {
                "w": jnp.sum(x * x, 1) * jnp.sum(dy * dy, 1)
            },
        ),
    )
    norms, ref = jax.jit(
        lambda p: (
            per_example.per_example_grad_norms(net, p, x, y),
            _reference(net, p, x, y, None),
        )
    )(params)
    np.testing.assert_allclose(norms, np.linalg.norm(_flat(ref), axis=1), rtol=1e-5)


def test_dropout_needs_a_key():
    net, params, x, y, _ = _setup("dropout", "float32")
    with pytest.raises(ValueError, match="pass dropout_key="):
        per_example.per_example_grad_norms(net, params, x, y)
    with pytest.raises(ValueError, match="pass dropout_key="):
        per_example.clipped_grad(net, params, x, y, l2_norm_clip=1.0)


# --- no autodiff in the manual path
def _manual_paths(net, params, x, y, key):
    """Every manual entry point, with noise and Dropout where the net has it."""
    noise_key = jax.random.key(0)
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=0.7, noise_multiplier=2)
    return (
        per_example.per_example_grads(net, params, x, y, dropout_key=key),
        per_example.per_example_sq_norms(net, params, x, y, dropout_key=key),
        per_example.per_example_grad_norms(net, params, x, y, dropout_key=key),
        per_example.clipped_grad(
            net,
            params,
            x,
            y,
            l2_norm_clip=1.0,
            noise_multiplier=1.0,
            key=noise_key,
            dropout_key=key,
        ),
        dp(params, x, y, noise_key, dropout_key=key),
    )


def test_manual_path_uses_no_autodiff(monkeypatch):
    # Tracing is enough: autodiff is entered while a function is traced. These
    # nets hold every layer type.
    setups = [_setup(name, "float32") for name in ("conv", "residual", "dropout")]
    forbid_autodiff(monkeypatch)
    with pytest.raises(AssertionError, match="reached autodiff"):
        jax.make_jaxpr(_reference, static_argnums=0)(*setups[0])
    for net, params, x, y, key in setups:
        jax.make_jaxpr(_manual_paths, static_argnums=0)(net, params, x, y, key)
