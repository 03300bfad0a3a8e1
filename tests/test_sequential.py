"""``jaxbp.Sequential``: the delta rule through any chain of layers.

The manual gradient of the loss equals ``jax.grad`` (float64 tight, float32 loose)
for several architectures; a Sequential of Dense and Activation layers is exactly the
MLP; no autodiff runs inside; a wrong architecture is an error when the network is
built, naming the layer.
"""

import contextlib
import io
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_harness import AutodiffCalled, forbid_autodiff, max_rel_error

import jaxbp
from jaxbp import layers as L

BATCH = 5

NETS = {
    "dense-tanh": jaxbp.Sequential(
        [L.Dense(5), L.Activation("tanh"), L.Dense(3)], input_shape=(4,)
    ),
    "reshape-flatten-sigmoid-mse": jaxbp.Sequential(
        [
            L.Reshape((2, 3)),
            L.Activation("softplus"),
            L.Flatten(),
            L.Dense(2, weight_init="glorot"),
            L.Activation("sigmoid"),
        ],
        input_shape=(6,),
        objective="mse",
    ),
    "residual": jaxbp.Sequential(
        [
            L.Dense(4),
            L.Residual([L.Dense(4), L.Activation("relu"), L.Dense(4)]),
            L.Activation("elu"),
            L.Residual(L.Dense(4)),
            L.Dense(3),
        ],
        input_shape=(3,),
    ),
    "batchnorm-layernorm": jaxbp.Sequential(
        [
            L.Dense(6),
            L.BatchNorm(),
            L.Activation("gelu"),
            L.Residual([L.LayerNorm(), L.Dense(6), L.Activation("tanh")]),
            L.Dense(3),
        ],
        input_shape=(4,),
    ),
}
#: Networks whose training loss needs a key (Dropout).
KEYED = {
    "dropout": jaxbp.Sequential(
        [
            L.Dense(8),
            L.Activation("relu"),
            L.Dropout(0.5),
            L.Residual([L.Dense(8), L.Dropout(0.25)]),
            L.Dense(3),
        ],
        input_shape=(4,),
    ),
}


def _batch(net, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(BATCH, *net.input_shape)), dtype)
    if net.objective == "softmax_cross_entropy":
        y = jnp.asarray(rng.integers(0, net.num_outputs, size=BATCH), jnp.int32)
    else:
        y = jnp.asarray(rng.uniform(size=(BATCH, net.num_outputs)), dtype)
    return x, y


def _params(net, dtype, seed=0):
    params = net.init(jax.random.key(seed), dtype=dtype)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed + 1)
    leaves = [
        leaf + jnp.asarray(0.1 * rng.normal(size=leaf.shape), dtype) for leaf in leaves
    ]
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("name", NETS)
def test_manual_grad_equals_jax_grad_float64(name):
    net = NETS[name]
    with jax.enable_x64(True):
        params = _params(net, jnp.float64)
        x, y = _batch(net, jnp.float64)
        value, grads = net.value_and_manual_grad(params, x, y)
        ref_value, ref = jax.value_and_grad(net.loss)(params, x, y)
        assert max_rel_error(grads, ref) <= 1e-10
        np.testing.assert_allclose(value, ref_value, rtol=1e-14)


@pytest.mark.parametrize("name", NETS)
def test_manual_grad_equals_jax_grad_float32(name):
    net = NETS[name]
    params = _params(net, jnp.float32)
    x, y = _batch(net, jnp.float32)
    grads = jax.jit(net.manual_grad)(params, x, y)
    ref = jax.jit(jax.grad(net.loss))(params, x, y)
    assert max_rel_error(grads, ref) <= 1e-5


@pytest.mark.parametrize("name", NETS)
def test_manual_grad_uses_no_autodiff(name, monkeypatch):
    net = NETS[name]
    params = _params(net, jnp.float32)
    x, y = _batch(net, jnp.float32)
    want = jax.grad(net.loss)(params, x, y)
    forbid_autodiff(monkeypatch)
    with pytest.raises(AutodiffCalled):
        jax.grad(net.loss)(params, x, y)
    got = jax.jit(lambda p: net.manual_grad(p, x, y))(params)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", KEYED)
def test_manual_grad_with_a_key_equals_jax_grad(name):
    net = KEYED[name]
    key = jax.random.key(3)
    with jax.enable_x64(True):
        params = _params(net, jnp.float64)
        x, y = _batch(net, jnp.float64)
        grads = net.manual_grad(params, x, y, key=key)
        ref = jax.grad(net.loss)(params, x, y, key=key)
        assert max_rel_error(grads, ref) <= 1e-10
        other = net.manual_grad(params, x, y, key=jax.random.key(4))
        assert max_rel_error(other, ref) > 1e-3  # another key, other masks
    with pytest.raises(ValueError, match="Dropout"):
        net.loss(params, x, y)


def test_batchnorm_state_is_updated_and_used_to_evaluate():
    net = NETS["batchnorm-layernorm"]
    params = _params(net, jnp.float32)
    x, y = _batch(net, jnp.float32)
    state = net.init_state()
    (_, new_state), _ = net.value_and_manual_grad_with_state(params, x, y, state=state)
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])
    out_new = net.forward(params, x, state=new_state)
    out_old = net.forward(params, x, state=state)
    assert not np.allclose(out_new, out_old)
    with pytest.raises(ValueError, match="state"):
        net.forward(params, x)


def test_sequential_of_dense_and_activation_is_the_mlp():
    mlp = jaxbp.MLP((4, 6, 5, 3), activation="relu")
    net = jaxbp.Sequential(
        [
            L.Dense(6),
            L.Activation("relu"),
            L.Dense(5),
            L.Activation("relu"),
            L.Dense(3),
        ],
        input_shape=(4,),
    )
    params = mlp.init(jax.random.key(1))
    seq_params = [params[0], {}, params[1], {}, params[2]]
    x, y = _batch(net, jnp.float32)
    value, grads = jax.jit(net.value_and_manual_grad)(seq_params, x, y)
    mlp_value, mlp_grads = jax.jit(mlp.value_and_manual_grad)(params, x, y)
    np.testing.assert_array_equal(value, mlp_value)
    chex.assert_trees_all_equal([grads[0], grads[2], grads[4]], mlp_grads)
    _, deltas = net.deltas(seq_params, x, net.check_batch(seq_params, x, y)[1])
    _, mlp_deltas = mlp.deltas(params, x, mlp.check_batch(params, x, y)[1])
    chex.assert_trees_all_close([deltas[0], deltas[2], deltas[4]], mlp_deltas)


def test_residual_backward_sums_both_paths():
    # y = x + W x: dL/dx = dy + dy W^T exactly.
    layer = L.Residual(L.Dense(3))
    params = [{"w": jnp.eye(3) * 2.0, "b": jnp.zeros(3)}]
    x = jnp.ones((1, 3))
    y, cache, _ = layer.forward(params, x)
    np.testing.assert_array_equal(y, 3.0 * x)
    _, dx = layer.backward(params, cache, jnp.ones((1, 3)))
    np.testing.assert_array_equal(dx, jnp.full((1, 3), 3.0))


def test_loss_and_state_is_the_has_aux_form():
    net = NETS["residual"]
    params = _params(net, jnp.float32)
    x, y = _batch(net, jnp.float32)
    state = net.init_state()
    (value, new_state), grads = net.value_and_manual_grad_with_state(
        params, x, y, state=state
    )
    (ref_value, ref_state), ref = jax.value_and_grad(net.loss_and_state, has_aux=True)(
        params, x, y, state=state
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref, rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(new_state) == jax.tree.structure(ref_state)


# --- a wrong architecture is found when the network is built ---------------------
def test_dense_after_an_image_names_the_layer_and_the_fix():
    with pytest.raises(
        L.LayerShapeError,
        match=r"layer 2 Dense\(500\): expects \(B, n\) inputs, got \(B, 4, 4, 3\); "
        r"add Flatten\(\) before it",
    ):
        jaxbp.Sequential([L.Reshape((4, 4, 3)), L.Dense(500)], input_shape=(48,))


def test_output_must_be_a_vector():
    with pytest.raises(L.LayerShapeError, match=r"output is \(B, 2, 3\)"):
        jaxbp.Sequential([L.Reshape((2, 3))], input_shape=(6,))


def test_residual_block_must_keep_the_shape():
    with pytest.raises(
        L.LayerShapeError,
        match=r"layer 2 Residual\(Dense\(5\)\): its block maps \(B, 4\) to \(B, 5\)",
    ):
        jaxbp.Sequential([L.Dense(4), L.Residual(L.Dense(5))], input_shape=(3,))


def test_softmax_cross_entropy_after_an_activation_is_refused():
    with pytest.raises(ValueError, match="takes the raw logits"):
        jaxbp.Sequential([L.Dense(3), L.Activation("sigmoid")], input_shape=(2,))


def test_not_a_layer_is_named():
    with pytest.raises(TypeError, match="Sequential layer 2 is 'relu', not a layer"):
        jaxbp.Sequential([L.Dense(3), "relu"], input_shape=(2,))


def test_wrong_params_name_the_layer():
    net = NETS["dense-tanh"]
    params = net.init(jax.random.key(0))
    params[2] = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"params\[2\]\['w'\] for layer 3 of 3"):
        net.loss(params, *_batch(net, jnp.float32))


def test_wrong_input_shape_is_named():
    net = jaxbp.Sequential(
        [L.Reshape((2, 2, 1)), L.Flatten(), L.Dense(2)], input_shape=(2, 2, 1)
    )
    params = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x must be a batch \(batch, 2, 2, 1\)"):
        net.forward(params, jnp.ones((3, 4)))


def test_specs_are_hashable_and_static_under_jit():
    net = NETS["residual"]
    assert hash(net) == hash(jaxbp.Sequential(net.layers, input_shape=(3,)))
    params = _params(net, jnp.float32)
    x, y = _batch(net, jnp.float32)
    step = jax.jit(jaxbp.Sequential.manual_grad, static_argnums=0)
    chex.assert_trees_all_close(
        step(net, params, x, y), net.manual_grad(params, x, y), rtol=1e-5
    )


# --- check_network_grad names the layer whose backward is wrong ----------------------
class _HalfInputGrad(L.Activation):
    """An activation whose backward halves the input cotangent: a planted bug."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return grads, 0.5 * dx


class _ScaledWeightGrad(L.Dense):
    """A dense layer whose weight gradient is 10% too large: a planted bug."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {**grads, "w": 1.1 * grads["w"]}, dx


def test_check_network_grad_passes_a_correct_sequential():
    net = NETS["residual"]
    with jax.enable_x64(True):
        params = _params(net, jnp.float64)
        report = jaxbp.check_network_grad(net, params, *_batch(net, jnp.float64))
    assert report.passed, str(report)
    assert report.first_failing_layer is None
    assert "agrees at the output of every layer" in report.notes[-1]


def test_check_network_grad_names_a_wrong_input_cotangent():
    net = jaxbp.Sequential(
        [L.Dense(4), _HalfInputGrad("tanh"), L.Dense(4), L.Activation("tanh"),
         L.Dense(3)],
        input_shape=(3,),
    )  # fmt: skip
    with jax.enable_x64(True):
        params = _params(net, jnp.float64)
        report = jaxbp.check_network_grad(net, params, *_batch(net, jnp.float64))
    assert not report.passed
    assert report.first_failing_layer == 2
    assert "the backward of layer 2 of 5, Activation(tanh)" in report.notes[-1]


def test_check_network_grad_names_a_wrong_parameter_gradient():
    net = jaxbp.Sequential(
        [L.Dense(4), L.Activation("tanh"), _ScaledWeightGrad(4),
         L.Activation("tanh"), L.Dense(3)],
        input_shape=(3,),
    )  # fmt: skip
    with jax.enable_x64(True):
        params = _params(net, jnp.float64)
        report = jaxbp.check_network_grad(net, params, *_batch(net, jnp.float64))
    assert not report.passed
    assert report.first_failing_layer == 3
    assert "layer 3 of 5, Dense(4) (params[2]: [2]['w'])" in report.notes[-1]


# --- the Sequential example of docs/layers.md and the README runs as written ------
def test_readme_layers_example_runs():
    root = pathlib.Path(__file__).resolve().parents[1]
    page = root / "docs" / "layers.md"
    section = page.read_text().split("\n## Training them\n", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)[1]
    assert f"```python\n{code}```" in (root / "README.md").read_text()  # the same
    namespace: dict = {}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, str(page), "exec"), namespace)
    assert stdout.getvalue().startswith("True localisation:"), stdout.getvalue()
    chex.assert_trees_all_close(
        namespace["grads"], namespace["auto"], rtol=1e-4, atol=1e-5
    )
    statement = section.split("says\n`", 1)[1].split("`", 1)[0]
    building = section.split(
        "is an error when the network is built, naming the layer:\n`"
    )
    with pytest.raises(L.LayerShapeError) as err:
        exec(building[1].split("` says", 1)[0], namespace)
    assert str(err.value) == statement


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_check_network_grad_passes_a_bias_before_batchnorm(dtype):
    # BatchNorm removes any shift, so the bias before it has gradient exactly zero:
    # both gradients hold only rounding there, which must not fail the check.
    net = jaxbp.Sequential(
        [L.Dense(5), L.BatchNorm(), L.Activation("tanh"), L.Dense(3)],
        input_shape=(4,),
    )
    with jax.enable_x64(dtype == jnp.float64):
        params = _params(net, dtype)
        report = jaxbp.check_network_grad(net, params, *_batch(net, dtype))
    assert report.passed, str(report)
