"""Tests for jaxbp.per_example: per-example gradients, their norms, DP-SGD clipping."""

import doctest

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import scipy.stats

import jaxbp
from jaxbp import _noise, per_example
from jaxbp.losses import LOSSES

# A few fixed shapes, reused everywhere, so that compiled ops are shared between tests.
SIZES = {1: (6, 4), 2: (6, 5, 4), 3: (6, 5, 3, 4)}
BATCH = 7
DTYPES = ["float32", "float64"]
CLOSE = {
    "float64": {"rtol": 1e-10, "atol": 1e-13},
    "float32": {"rtol": 1e-4, "atol": 1e-6},
}
AUTODIFF = ("grad", "vjp", "value_and_grad", "jvp", "linearize")


# --- helpers
def _net(depth, activation="tanh", objective="softmax_cross_entropy"):
    output = "identity" if LOSSES[objective].needs_logits else "sigmoid"
    return jaxbp.MLP(
        sizes=SIZES[depth],
        activation=activation,
        output_activation=output,
        objective=objective,
    )


def _params(net, dtype, seed=0):
    """``net.init`` with small random biases, so that bias gradients are exercised."""
    params = net.init(jax.random.key(seed), dtype=jnp.dtype(dtype))
    rng = np.random.default_rng(seed + 1)
    return [
        {"w": p["w"], "b": jnp.asarray(0.1 * rng.normal(size=p["b"].shape), dtype)}
        for p in params
    ]


def _batch(net, dtype, seed=0):
    """Labels for the cross-entropy, float targets in (0, 1) for the squared losses."""
    rng = np.random.default_rng(seed)
    n_in, n_out = net.sizes[0], net.sizes[-1]
    x = jnp.asarray(rng.normal(size=(BATCH, n_in)), dtype)
    if LOSSES[net.objective].needs_logits:
        y = jnp.asarray(rng.integers(0, n_out, size=BATCH), jnp.int32)
    else:
        y = jnp.asarray(rng.uniform(0.05, 0.95, size=(BATCH, n_out)), dtype)
    return x, y


def _setup(dtype, depth=3, activation="tanh", objective="softmax_cross_entropy"):
    net = _net(depth, activation, objective)
    return net, _params(net, dtype), *_batch(net, dtype)


def _flat(per_example_grads):
    """``(B, num_params)`` NumPy array of materialised per-example gradients."""
    leaves = jax.tree.leaves(per_example_grads)
    return np.concatenate([np.asarray(g).reshape(g.shape[0], -1) for g in leaves], 1)


def _mean(per_example_grads):
    return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example_grads)


def _optax_dp(per_example_grads, params, clip, noise, key):
    tx = optax.contrib.differentially_private_aggregate(clip, noise, key)
    updates, _ = tx.update(per_example_grads, tx.init(params))
    return updates


@pytest.fixture
def no_autodiff(monkeypatch):
    """Makes every reverse- and forward-mode autodiff entry point raise."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the manual path must not use autodiff")

    for name in AUTODIFF:
        monkeypatch.setattr(jax, name, forbidden)


# --- per-example gradients
# Every depth, four activations and all three losses without their full product (13
# cases): the float64 check is tight, so float32 (loose) runs on fewer cases. Each
# case is one jitted program, which compiles faster than dispatching op by op.
CASES = [
    (depth, activation, objective, dtype)
    for depth, activation in [(1, "sigmoid"), (2, "relu"), (3, "tanh"), (3, "gelu")]
    for objective in sorted(LOSSES)
    for dtype in DTYPES
    if (dtype == "float64" or activation == "tanh")
    and (activation != "gelu" or objective == "mse")
]


@pytest.mark.parametrize(("depth", "activation", "objective", "dtype"), CASES)
def test_manual_equals_autodiff_and_mean_is_batch_gradient(
    depth, activation, objective, dtype
):
    with jax.enable_x64(dtype == "float64"):
        net, params, x, y = _setup(dtype, depth, activation, objective)

        @jax.jit
        def compute(params, x, y):
            return (
                per_example.per_example_grads(net, params, x, y),
                per_example.per_example_grads(net, params, x, y, method="autodiff"),
                net.manual_grad(params, x, y),
            )

        manual, auto, grads = compute(params, x, y)
        expected = jax.tree.map(lambda p: (BATCH, *p.shape), params)
        assert jax.tree.map(jnp.shape, manual) == expected
        chex.assert_trees_all_equal_dtypes(manual, auto)
        assert jax.tree.leaves(manual)[0].dtype == dtype
        chex.assert_trees_all_close(manual, auto, **CLOSE[dtype])
        chex.assert_trees_all_close(_mean(manual), grads, **CLOSE[dtype])
        chex.assert_trees_all_close(_mean(auto), grads, **CLOSE[dtype])


def test_each_row_is_that_examples_gradient():
    net, params, x, y = _setup("float32")
    per_ex = per_example.per_example_grads(net, params, x, y)
    i = BATCH - 2
    one = net.manual_grad(params, x[i : i + 1], y[i : i + 1])
    row = jax.tree.map(lambda g: g[i], per_ex)
    chex.assert_trees_all_close(row, one, **CLOSE["float32"])


def test_unknown_method():
    net, params, x, y = _setup("float32")
    with pytest.raises(ValueError, match="method must be one of"):
        per_example.per_example_grads(net, params, x, y, method="vmap")


def test_batch_is_checked():
    net, params, x, y = _setup("float32")
    with pytest.raises(ValueError, match="batch size"):
        per_example.per_example_grad_norms(net, params, x, y[:3])


# --- norms
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("depth", "objective"), [(1, "half_sse"), (2, "mse"), (3, "softmax_cross_entropy")]
)
def test_norms_equal_materialised(depth, objective, dtype):
    with jax.enable_x64(dtype == "float64"):
        net, params, x, y = _setup(dtype, depth, "relu", objective)

        @jax.jit
        def compute(params, x, y):
            return (
                per_example.per_example_grads(net, params, x, y),
                per_example.per_example_sq_norms(net, params, x, y),
                per_example.per_example_grad_norms(net, params, x, y),
            )

        per_ex, sq, norms = compute(params, x, y)
        expected_sq = jax.tree.map(
            lambda g: jnp.sum(g.reshape(BATCH, -1) ** 2, axis=1), per_ex
        )
        chex.assert_trees_all_close(sq, expected_sq, **CLOSE[dtype])
        assert norms.shape == (BATCH,) and norms.dtype == dtype
        np.testing.assert_allclose(
            norms, np.linalg.norm(_flat(per_ex), axis=1), **CLOSE[dtype]
        )


def test_clip_factors():
    norms = jnp.array([0.0, 0.5, 1.0, 2.0, 8.0])
    np.testing.assert_allclose(
        per_example.clip_factors(norms, 1.0), [1.0, 1.0, 1.0, 0.5, 0.125]
    )
    np.testing.assert_array_equal(per_example.clip_factors(norms, jnp.inf), 1.0)


# --- clipping
def _against_optax(net, params, x, y, noise_multiplier, key):
    """optax's DP aggregate of vmap(grad), and clipped_grad's loss and grads.

    C is the median norm. Also checks ``clipped_grad(method="autodiff")`` against optax
    without noise, and against the manual path with it.
    """

    @jax.jit
    def compute(params, x, y):
        norms = per_example.per_example_grad_norms(net, params, x, y)
        clip = jnp.median(norms)  # examples on both sides of C
        per_ex = per_example.per_example_grads(net, params, x, y, method="autodiff")
        optax_key = jax.random.key(0) if key is None else key
        expected = _optax_dp(per_ex, params, clip, noise_multiplier, optax_key)
        loss, grads = per_example.clipped_grad(
            net,
            params,
            x,
            y,
            l2_norm_clip=clip,
            noise_multiplier=noise_multiplier,
            key=key,
        )
        _, auto = per_example.clipped_grad(
            net,
            params,
            x,
            y,
            l2_norm_clip=clip,
            noise_multiplier=noise_multiplier,
            key=key,
            method="autodiff",
        )
        return norms, clip, expected, loss, grads, auto

    norms, clip, expected, loss, grads, auto = compute(params, x, y)
    assert (norms > clip).sum() >= 2 and (norms < clip).sum() >= 2
    dtype = str(norms.dtype)
    if noise_multiplier == 0:
        chex.assert_trees_all_close(auto, expected, **CLOSE[dtype])
    else:
        # the autodiff path adds the same float32 noise as the manual one (to an ulp
        # of float32: the two programs may evaluate the draw's log differently)
        chex.assert_trees_all_close(auto, grads, **CLOSE["float32"])
    return expected, loss, grads


@pytest.mark.parametrize(
    ("objective", "dtype"),
    [(objective, "float64") for objective in sorted(LOSSES)]
    + [("softmax_cross_entropy", "float32")],
)
def test_clipped_equals_optax_without_noise(objective, dtype):
    with jax.enable_x64(dtype == "float64"):
        net, params, x, y = _setup(dtype, 3, "tanh", objective)
        expected, loss, grads = _against_optax(net, params, x, y, 0.0, None)
        chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
        chex.assert_trees_all_close(grads, expected, **CLOSE[dtype])
        chex.assert_trees_all_close(loss, net.loss(params, x, y), **CLOSE[dtype])


def test_noise_matches_optax_convention():
    # optax draws jax.random.normal leaf by leaf; jaxbp draws gaussian_noise once for
    # all parameters. The clipped part is equal (tests above); the noise is, leaf for
    # leaf, sigma C / B times that leaf's slice of gaussian_noise(key) (the draw
    # itself is tested for being N(0, 1) below), and optax's update is its clipped
    # mean plus sigma C / B times its own normals.
    with jax.enable_x64(True):
        net, params, x, y = _setup("float64", 2, "relu")
        key, sigma = jax.random.key(3), 1.3
        expected, _, grads = _against_optax(net, params, x, y, sigma, key)
        clip = float(jnp.median(per_example.per_example_grad_norms(net, params, x, y)))
        _, clean = per_example.clipped_grad(net, params, x, y, l2_norm_clip=clip)
        optax_clean = _against_optax(net, params, x, y, 0.0, None)[0]
        scale = sigma * clip / BATCH
        draw = np.asarray(per_example.gaussian_noise(key, (net.num_params,)))
        ours, theirs, start = [], [], 0
        for g, c, e, oc in zip(
            *map(jax.tree.leaves, (grads, clean, expected, optax_clean)), strict=True
        ):
            leaf_draw = draw[start : start + g.size].reshape(g.shape)
            ours.append(np.ravel((g - c) / scale))
            np.testing.assert_allclose(
                ours[-1], leaf_draw.ravel(), rtol=2e-6, atol=1e-6
            )
            theirs.append(np.ravel((e - oc) / scale))
            start += g.size
        # both are standard normals at the same scale (59 draws each)
        for z in (np.concatenate(ours), np.concatenate(theirs)):
            assert z.size == net.num_params
            assert abs(z.mean()) < 0.6 and abs(z.std() - 1) < 0.4


def test_clipped_equals_numpy_reference():
    with jax.enable_x64(True):
        net, params, x, y = _setup("float64")
        g = _flat(per_example.per_example_grads(net, params, x, y))
        norms = np.linalg.norm(g, axis=1)
        clip = float(np.median(norms))
        # (1/B) sum_i g_i min(1, C / ||g_i||)
        clipped = g * np.minimum(1.0, clip / norms)[:, None]
        _, grads = per_example.clipped_grad(net, params, x, y, l2_norm_clip=clip)
        flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(grads)])
        np.testing.assert_allclose(flat, clipped.mean(axis=0), rtol=1e-12, atol=1e-15)
        # every clipped example's contribution has norm exactly C
        np.testing.assert_allclose(
            np.linalg.norm(clipped, axis=1), np.minimum(norms, clip), rtol=1e-12
        )


@pytest.mark.parametrize("clip", [np.inf, 1e30])
def test_huge_clip_is_batch_gradient(clip):
    with jax.enable_x64(True):
        net, params, x, y = _setup("float64", objective="half_sse")
        value, grads = net.value_and_manual_grad(params, x, y)
        loss, clipped = per_example.clipped_grad(net, params, x, y, l2_norm_clip=clip)
        chex.assert_trees_all_close(clipped, grads, **CLOSE["float64"])
        chex.assert_trees_all_close(loss, value, **CLOSE["float64"])


def test_tiny_clip_gives_unit_norm_contributions():
    # With C far below every norm, each example contributes g_i C / ||g_i||.
    with jax.enable_x64(True):
        net, params, x, y = _setup("float64")
        g = _flat(per_example.per_example_grads(net, params, x, y))
        unit = g / np.linalg.norm(g, axis=1, keepdims=True)
        _, grads = per_example.clipped_grad(net, params, x, y, l2_norm_clip=1e-6)
        flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(grads)])
        np.testing.assert_allclose(flat, 1e-6 * unit.mean(axis=0), rtol=1e-10)


def test_noise_statistics():
    # noise = (noisy - clean) ~ N(0, (sigma C / B)^2) in every coordinate, every leaf
    net, params, x, y = _setup("float32", depth=2)
    clip, sigma = 0.5, 2.0
    _, clean = per_example.clipped_grad(net, params, x, y, l2_norm_clip=clip)

    def noisy(key):
        return per_example.clipped_grad(
            net, params, x, y, l2_norm_clip=clip, noise_multiplier=sigma, key=key
        )[1]

    keys = jax.random.split(jax.random.key(0), 400)
    grads = jax.jit(jax.vmap(noisy))(keys)
    z = jax.tree.map(lambda g, c: (g - c[None]) * BATCH / (sigma * clip), grads, clean)
    for leaf in jax.tree.leaves(z):
        leaf = np.asarray(leaf, np.float64)
        assert abs(leaf.mean()) < 5 / np.sqrt(leaf.size)
        assert abs(leaf.std() - 1) < 0.08
    all_z = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(z)])
    assert abs(all_z.mean()) < 4 / np.sqrt(all_z.size)  # ~17,600 draws
    assert abs(all_z.std() - 1) < 0.03
    assert scipy.stats.kstest(all_z, "norm").pvalue > 1e-3
    # independent across coordinates and leaves: no two share their draws
    z_w, z_b = np.asarray(z[0]["w"]), np.asarray(z[0]["b"])
    for u, v in ((z_w[:, 0, 0], z_w[:, 0, 1]), (z_w[:, 0, 0], z_b[:, 0])):
        assert abs(np.corrcoef(u, v)[0, 1]) < 0.25


# --- the noise sampler
N_DRAW = 200_000


@pytest.fixture(scope="module")
def draws():
    """Two large draws of gaussian_noise: from key(0) and from a step key of it."""
    key = jax.random.key(0)
    first = np.asarray(per_example.gaussian_noise(key, (N_DRAW,)), np.float64)
    step = per_example.dp_noise_key(key, 1)
    second = np.asarray(per_example.gaussian_noise(step, (N_DRAW,)), np.float64)
    return first, second


def test_gaussian_noise_is_standard_normal(draws):
    z = draws[0]
    se = 1 / np.sqrt(N_DRAW)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(scipy.stats.skew(z)) < 5 * np.sqrt(6) * se
    assert abs(scipy.stats.kurtosis(z)) < 5 * np.sqrt(24) * se
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    # the tails: P(|z| > 3) = 0.0027, P(|z| > 4) = 6.3e-5, within 5 sigma of binomial
    for t in (3.0, 4.0):
        p = 2 * scipy.stats.norm.sf(t)
        count = np.sum(np.abs(z) > t)
        assert abs(count - N_DRAW * p) < 5 * np.sqrt(N_DRAW * p) + 1
    # symmetric: each sign equally often
    assert abs(np.mean(z > 0) - 0.5) < 5 * se


def test_gaussian_noise_is_independent(draws):
    first, second = draws
    se = 1 / np.sqrt(N_DRAW)
    # between steps (keys), and between neighbouring elements of one draw
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 * se
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 5 * se
    # no dependence through the magnitudes or signs either
    assert abs(np.corrcoef(first**2, second**2)[0, 1]) < 5 * se
    assert abs(np.corrcoef(np.abs(first[:-1]), np.abs(first[1:]))[0, 1]) < 5 * se
    assert abs(np.mean((first > 0) == (second > 0)) - 0.5) < 5 * se
    # a chi-square test of independence of consecutive elements' deciles
    cut = scipy.stats.norm.ppf(np.linspace(0.1, 0.9, 9))
    table = np.zeros((10, 10))
    np.add.at(table, (np.digitize(first[:-1], cut), np.digitize(first[1:], cut)), 1)
    assert scipy.stats.chi2_contingency(table).pvalue > 1e-3


def test_gaussian_noise_fails_a_wrong_sampler():
    # The statistics above catch a sampler that is not N(0, 1): a uniform of the same
    # variance has the right mean and variance but not the shape.
    u = np.asarray(jax.random.uniform(jax.random.key(0), (N_DRAW,)), np.float64)
    wrong = (u - 0.5) * np.sqrt(12)
    assert abs(wrong.var() - 1) < 0.02
    assert scipy.stats.kstest(wrong, "norm").pvalue < 1e-3
    assert abs(scipy.stats.kurtosis(wrong)) > 5 * np.sqrt(24 / N_DRAW)


def test_gaussian_noise_is_a_function_of_key_and_slices():
    key = jax.random.key(5)
    a = per_example.gaussian_noise(key, (3, 7))
    chex.assert_trees_all_equal(a, per_example.gaussian_noise(key, (3, 7)))
    # another program (jit, another shape) may round the log an ulp apart
    same = {"rtol": 2e-6, "atol": 1e-7}
    jitted = jax.jit(per_example.gaussian_noise, static_argnums=1)(key, (3, 7))
    chex.assert_trees_all_close(a, jitted, **same)
    # the shape only lays the same sequence out: row-major
    chex.assert_trees_all_close(
        a.ravel(), per_example.gaussian_noise(key, (21,)), **same
    )
    chex.assert_trees_all_close(
        a.ravel()[:5], per_example.gaussian_noise(key, (5,)), **same
    )
    assert not np.allclose(a, per_example.gaussian_noise(jax.random.key(6), (3, 7)))
    assert per_example.gaussian_noise(key, (4,), jnp.bfloat16).dtype == jnp.bfloat16
    # any key implementation works (others are first turned into a threefry key)
    rbg = per_example.gaussian_noise(jax.random.key(5, impl="rbg"), (1000,))
    assert abs(float(rbg.std()) - 1) < 0.1


def test_gaussian_noise_too_large():
    with pytest.raises(ValueError, match="fewer than 2\\^32"):
        per_example.gaussian_noise(jax.random.key(0), (2**16, 2**16))


def test_fold_in_is_jax_fold_in():
    # dp_noise_key hashes with the unrolled Threefry: it must be jax.random.fold_in
    key = jax.random.key(11)
    for data in (0, 1, 12345, 2**31 - 1, np.uint32(2**32 - 1), jnp.int32(7)):
        chex.assert_trees_all_equal(
            jax.random.key_data(_noise.fold_in(key, data)),
            jax.random.key_data(jax.random.fold_in(key, data)),
        )
    expected = jax.random.fold_in(jax.random.fold_in(key, 0x44505347), 9)
    chex.assert_trees_all_equal(
        jax.random.key_data(per_example.dp_noise_key(key, 9)),
        jax.random.key_data(expected),
    )


def test_threefry_is_jax_threefry():
    # the unrolled hash is JAX's Threefry-2x32
    key = jax.random.key(42)
    words = jax.random.key_data(key)
    count = jnp.arange(10, dtype=jnp.uint32)
    x1, x2 = _noise.threefry2x32(words[0], words[1], count[:5], count[5:])
    chex.assert_trees_all_equal(
        jnp.concatenate([x1, x2]), jax.extend.random.threefry_2x32(words, count)
    )


def test_noise_is_deterministic_in_key():
    net, params, x, y = _setup("float32")
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=1.0, noise_multiplier=1.0)
    _, a = dp(params, x, y, jax.random.key(7))
    _, b = dp(params, x, y, jax.random.key(7))
    _, c = dp(params, x, y, jax.random.key(8))
    chex.assert_trees_all_equal(a, b)
    for leaf_a, leaf_c in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True):
        assert not np.allclose(leaf_a, leaf_c)


def test_zero_noise_ignores_key():
    net, params, x, y = _setup("float32")
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=0.3)
    _, a = dp(params, x, y, jax.random.key(1))
    _, b = dp(params, x, y, None)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"l2_norm_clip": 0.0}, "l2_norm_clip must be positive"),
        ({"l2_norm_clip": -1.0}, "l2_norm_clip must be positive"),
        ({"l2_norm_clip": np.float32(0)}, "l2_norm_clip must be positive"),
        ({"l2_norm_clip": 1.0, "noise_multiplier": -0.1}, "must be non-negative"),
        ({"l2_norm_clip": 1.0, "noise_multiplier": np.nan}, "must be non-negative"),
    ],
)
def test_dp_argument_errors(kwargs, match):
    # per_example's public functions are an entry point of their own: they check.
    net, params, x, y = _setup("float32")
    with pytest.raises(ValueError, match=match):
        per_example.make_dp_value_and_grad(net, **kwargs)
    with pytest.raises(ValueError, match=match):
        per_example.clipped_grad(net, params, x, y, **kwargs)


def test_dp_unknown_method():
    net, params, x, y = _setup("float32")
    with pytest.raises(ValueError, match="method must be one of"):
        per_example.make_dp_value_and_grad(net, l2_norm_clip=1.0, method="torch")
    with pytest.raises(ValueError, match="method must be one of"):
        per_example.clipped_grad(net, params, x, y, l2_norm_clip=1.0, method="torch")


def test_noise_needs_key():
    net, params, x, y = _setup("float32")
    with pytest.raises(ValueError, match="needs a key"):
        per_example.clipped_grad(
            net, params, x, y, l2_norm_clip=1.0, noise_multiplier=1.0
        )


def test_dp_step_jits_once_and_trains():
    # A DP-SGD loop in the shape the training step uses: a fresh key per step.
    net, params, x, y = _setup("float32", depth=2)
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=1.0, noise_multiplier=0.1)
    optimizer = optax.sgd(0.5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, key):
        loss, grads = dp(params, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, key = optimizer.init(params), jax.random.key(0)
    losses = []
    for _ in range(30):
        key, step_key = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, step_key)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


# --- no autodiff in the manual path
def test_manual_path_uses_no_autodiff(no_autodiff):
    net, params, x, y = _setup("float32")
    with pytest.raises(AssertionError, match="must not use autodiff"):
        jax.grad(net.loss)(params, x, y)  # the fixture is in force
    per_example.per_example_grads(net, params, x, y)
    per_example.per_example_sq_norms(net, params, x, y)
    per_example.per_example_grad_norms(net, params, x, y)
    per_example.clipped_grad(
        net, params, x, y, l2_norm_clip=1.0, noise_multiplier=1.0, key=jax.random.key(0)
    )
    # a fresh jit trace too
    dp = per_example.make_dp_value_and_grad(net, l2_norm_clip=0.7, noise_multiplier=2)
    jax.jit(dp)(params, x, y, jax.random.key(0))


def test_doctests():
    result = doctest.testmod(per_example, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_dp_noise_key_is_fresh():
    key = jax.random.key(42)
    taken = [*jax.random.split(key), *jax.random.split(key, 3)]
    taken += [jax.random.fold_in(key, i) for i in range(4)]
    noise_keys = [per_example.dp_noise_key(key, step) for step in range(4)]
    data = {tuple(np.asarray(jax.random.key_data(k))) for k in taken}
    noise = {tuple(np.asarray(jax.random.key_data(k))) for k in noise_keys}
    assert len(noise) == 4 and not noise & data
    traced = jax.jit(per_example.dp_noise_key)(key, jnp.int32(2))
    chex.assert_trees_all_equal(
        jax.random.key_data(traced), jax.random.key_data(noise_keys[2])
    )
