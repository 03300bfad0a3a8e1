"""Training: steps, epochs, evaluation, divergence checks, optimizers and the loop
over epochs, ``train_epochs``."""

import dataclasses
import functools
import math
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbp import optim, train
from jaxbp.mlp import MLP
from jaxbp.train import DivergenceError

# A few fixed shapes, reused everywhere, so that compiled programs are shared.
NET = MLP((6, 5, 3), activation="tanh")
RELU_NET = MLP((6, 5, 3), activation="relu")
N, BATCH = 96, 32
# chex.assert_trees_all_close tolerances, manual vs autodiff after a few steps.
CLOSE = {
    "float64": {"rtol": 1e-10, "atol": 1e-12},
    "float32": {"rtol": 1e-4, "atol": 1e-5},
}


# --- helpers
def _data(n=N, *, net=NET, seed=0, dtype="float32"):
    """Random inputs ``(n, sizes[0])`` and integer labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, net.sizes[0])).astype(dtype)
    y = rng.integers(0, net.sizes[-1], n).astype(np.int32)
    return x, y


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _trees_equal(a, b):
    """Bitwise equality of two pytrees of arrays (same structure, dtypes, values)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        x.dtype == y.dtype and np.array_equal(x, y)
        for x, y in zip(_leaves(a), _leaves(b), strict=True)
    )


def _key_data(key):
    return np.asarray(jax.random.key_data(key))


def _count_step_traces(monkeypatch):
    """Makes a second trace of the step body (``train._apply_step``) an error."""
    chex.clear_trace_counter()  # the counter is global: start this test at zero
    monkeypatch.setattr(
        train, "_apply_step", chex.assert_max_traces(train._apply_step, n=1)
    )


def _blobs(n, *, seed, centers):
    """Gaussian blobs around ``centers`` (10, 16): inputs ``(n, 16)``, labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(centers), n).astype(np.int32)
    x = centers[y] + rng.normal(size=(n, centers.shape[1]))
    return x.astype(np.float32), y


# --- make_train_step
@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("sgd", "float64"),
        ("momentum", "float64"),
        ("adam", "float64"),
        ("sgd", "float32"),
        ("adam", "float32"),
    ],
)
def test_manual_and_autodiff_steps_agree(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        optimizer = optim.make_optimizer(name, optim.DEFAULT_LEARNING_RATES[name])
        state0 = train.init_train_state(
            NET, optimizer, jax.random.key(0), dtype=jnp.dtype(dtype)
        )
        x, y = _data(dtype=dtype)
        final, losses = {}, {}
        for grad in train.GRAD_KINDS:
            step = train.make_train_step(NET, optimizer, grad=grad)
            state, losses[grad] = state0, []
            for i in range(6):
                batch = slice(16 * i, 16 * (i + 1))
                state, metrics = step(state, (x[batch], y[batch]))
                losses[grad].append(metrics["loss"])
            final[grad] = state
        manual, auto = final["manual"], final["autodiff"]
        assert int(manual.step) == int(auto.step) == 6
        assert manual.params[0]["w"].dtype == jnp.dtype(dtype)
        # The steps did move the parameters (the comparison is not vacuous).
        assert not np.allclose(manual.params[0]["w"], state0.params[0]["w"])
        chex.assert_trees_all_close(manual.params, auto.params, **CLOSE[dtype])
        chex.assert_trees_all_close(manual.opt_state, auto.opt_state, **CLOSE[dtype])
        chex.assert_trees_all_close(
            losses["manual"], losses["autodiff"], **CLOSE[dtype]
        )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_sgd_step_is_params_minus_lr_times_manual_grad(dtype):
    with jax.enable_x64(dtype == "float64"):
        lr = 0.25
        optimizer = optim.make_optimizer("sgd", lr)
        state = train.init_train_state(
            NET, optimizer, jax.random.key(1), dtype=jnp.dtype(dtype)
        )
        x, y = _data(BATCH, dtype=dtype)
        step = train.make_train_step(NET, optimizer, grad="manual")
        new_state, metrics = step(state, (x, y))
        loss, grads = jax.jit(NET.value_and_manual_grad)(state.params, x, y)
        expected = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
        assert _trees_equal(new_state.params, expected)
        # The reported loss is the batch loss before the update.
        assert np.array_equal(metrics["loss"], loss)
        assert int(new_state.step) == 1
        assert np.array_equal(_key_data(new_state.key), _key_data(state.key))


def test_train_step_does_not_retrace(monkeypatch):
    # Count traces of the step body: a retrace on a later call would trip the assert.
    _count_step_traces(monkeypatch)
    optimizer = optim.make_optimizer("adam", 1e-2)
    step = train.make_train_step(NET, optimizer, grad="manual")
    x, y = _data(BATCH)
    for seed in range(3):  # fresh states and states returned by the step
        state = train.init_train_state(NET, optimizer, jax.random.key(seed))
        for _ in range(2):
            state, _ = step(state, (x, y))
    assert int(state.step) == 2
    if hasattr(step, "_cache_size"):
        assert step._cache_size() == 1


# --- make_train_epoch
@pytest.mark.parametrize("grad", train.GRAD_KINDS)
def test_epoch_runs_floor_n_over_b_steps_without_retracing(monkeypatch, grad):
    _count_step_traces(monkeypatch)
    optimizer = optim.make_optimizer("adam", 1e-2)
    epoch = train.make_train_epoch(NET, optimizer, batch_size=BATCH, grad=grad)
    n = 100  # 3 batches of 32; 4 examples left over each epoch
    x, y = _data(n)
    for seed in range(2):  # fresh states, then states returned by the epoch
        state = train.init_train_state(NET, optimizer, jax.random.key(seed))
        for k in (1, 2, 3):
            state, metrics = epoch(state, x, y)
            assert metrics["loss"].shape == (n // BATCH,)
            assert int(state.step) == k * (n // BATCH)
            assert np.all(np.isfinite(metrics["loss"]))
    if hasattr(epoch, "_cache_size"):
        assert epoch._cache_size() == 1


def test_epoch_rejects_bad_batch_sizes():
    optimizer = optim.make_optimizer("sgd", 0.1)
    for bad in (0, -4):
        with pytest.raises(ValueError, match="batch_size"):
            train.make_train_epoch(NET, optimizer, batch_size=bad)
    epoch = train.make_train_epoch(NET, optimizer, batch_size=N + 1)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    with pytest.raises(ValueError, match=f"batch_size {N + 1} exceeds the {N}"):
        epoch(state, *_data())


def test_epoch_reshuffles_every_epoch_and_uses_each_example_once():
    # A zero learning rate keeps the parameters fixed, so each batch loss depends only
    # on which examples the shuffle put in the batch.
    optimizer = optax.sgd(0.0)
    epoch = train.make_train_epoch(NET, optimizer, batch_size=BATCH)
    state0 = train.init_train_state(NET, optimizer, jax.random.key(0))
    x, y = _data()
    state1, m1 = epoch(state0, x, y)
    state2, m2 = epoch(state1, x, y)
    keys = [_key_data(s.key) for s in (state0, state1, state2)]
    assert not np.array_equal(keys[0], keys[1])
    assert not np.array_equal(keys[1], keys[2])
    assert not np.allclose(m1["loss"], m2["loss"])  # different batches
    # N is a multiple of the batch size, so each epoch is a permutation: the mean
    # batch loss is the full-data loss.
    assert int(state2.step) == 2 * (N // BATCH)
    full = jax.jit(NET.loss)(state0.params, x, y)
    for metrics in (m1, m2):
        np.testing.assert_allclose(np.mean(metrics["loss"]), full, rtol=1e-5)
    # The same state gives the same shuffle.
    _, again = epoch(state0, x, y)
    assert np.array_equal(again["loss"], m1["loss"])


def test_epoch_scales_uint8_pixels():
    optimizer = optim.make_optimizer("sgd", 0.5)
    epoch = train.make_train_epoch(NET, optimizer, batch_size=BATCH)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    rng = np.random.default_rng(3)
    x_u8 = rng.integers(0, 256, (N, NET.sizes[0]), dtype=np.uint8)
    _, y = _data()
    s_u8, m_u8 = epoch(state, x_u8, y)
    s_f, m_f = epoch(state, x_u8.astype(np.float32) / np.float32(255), y)
    assert s_u8.params[0]["w"].dtype == jnp.float32
    chex.assert_trees_all_close(s_u8.params, s_f.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(m_u8["loss"], m_f["loss"], rtol=1e-6)
    assert not np.allclose(s_u8.params[0]["w"], state.params[0]["w"])


# --- make_evaluate
def _numpy_eval(params, x, y):
    """Loss and accuracy of NET (tanh, softmax cross-entropy) in float64 NumPy."""
    p = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in params]
    h = np.tanh(x.astype(np.float64) @ p[0]["w"] + p[0]["b"])
    logits = h @ p[1]["w"] + p[1]["b"]
    top = logits.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    loss = np.mean(lse - logits[np.arange(len(y)), y])
    correct = int(np.sum(np.argmax(logits, axis=1) == y))
    return loss, correct


@pytest.mark.parametrize("batch_size", [100, 2048])
def test_evaluate_counts_every_example_once(batch_size):
    n = 1003
    params = NET.init(jax.random.key(4))
    x, y = _data(n, seed=5)
    loss, correct = _numpy_eval(params, x, y)
    result = train.make_evaluate(NET, batch_size=batch_size)(params, x, y)
    assert int(result["correct"]) == correct
    assert float(result["accuracy"]) == pytest.approx(correct / n, rel=1e-6)
    np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)


def test_evaluate_accepts_one_hot_targets_and_uint8_inputs():
    n = 250
    params = NET.init(jax.random.key(4))
    rng = np.random.default_rng(6)
    x_u8 = rng.integers(0, 256, (n, NET.sizes[0]), dtype=np.uint8)
    _, y = _data(n, seed=6)
    evaluate = train.make_evaluate(NET, batch_size=100)
    x = x_u8.astype(np.float32) / np.float32(255)
    loss, correct = _numpy_eval(params, x, y)
    by_labels = evaluate(params, x_u8, y)
    by_one_hot = evaluate(params, x_u8, np.eye(3, dtype=np.float32)[y])
    for result in (by_labels, by_one_hot):
        assert int(result["correct"]) == correct
        np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)


def test_evaluate_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        train.make_evaluate(NET, batch_size=0)


# --- divergence
@pytest.mark.parametrize(
    ("losses", "first_step", "bad_step"),
    [
        ([1.0, 2.0, np.nan, np.inf], 11, 13),
        ([np.inf, 1.0], 1, 1),
        ([0.5, 0.4, 0.3, -np.inf], 101, 104),
    ],
)
def test_check_finite_names_the_first_bad_step(losses, first_step, bad_step):
    with pytest.raises(DivergenceError, match=rf"\bstep {bad_step}\b"):
        train.check_finite(np.asarray(losses, np.float32), first_step)


def test_check_finite_passes_finite_losses():
    train.check_finite(jnp.asarray([3.0, 2.0, 1e30]), 1)
    train.check_finite(np.zeros(0), 1)
    assert issubclass(DivergenceError, FloatingPointError)


def test_train_epochs_raises_naming_the_step_on_infinite_inputs():
    optimizer = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    state = state._replace(step=jnp.asarray(5, jnp.int32))  # as if resumed
    x, y = _data()
    x[:] = np.inf
    with pytest.raises(DivergenceError, match=r"\bstep 6\b"):
        train.train_epochs(NET, optimizer, state, (x, y), epochs=1, batch_size=BATCH)


def test_train_epochs_raises_naming_the_step_for_a_huge_learning_rate():
    optimizer = optax.sgd(1e30)
    state = train.init_train_state(RELU_NET, optimizer, jax.random.key(0))
    x, y = _data(net=RELU_NET)
    # Replay the same epoch to find the first step whose loss is not finite.
    epoch = train.make_train_epoch(RELU_NET, optimizer, batch_size=BATCH)
    losses = np.asarray(epoch(state, x, y)[1]["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    assert bad.size and bad[0] > 0  # diverges after a finite first step
    with pytest.raises(DivergenceError, match=rf"\bstep {bad[0] + 1}\b") as info:
        train.train_epochs(
            RELU_NET, optimizer, state, (x, y), epochs=1, batch_size=BATCH
        )
    assert "learning rate" in str(info.value)


# --- value_and_grad_fn
@pytest.mark.parametrize("grad", ["numeric", "Manual", "", None])
def test_unknown_grad_kinds_are_rejected(grad):
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match="grad must be one of"):
        train.value_and_grad_fn(NET, grad)
    with pytest.raises(ValueError, match="grad must be one of"):
        train.make_train_step(NET, optimizer, grad=grad)
    with pytest.raises(ValueError, match="grad must be one of"):
        train.make_train_epoch(NET, optimizer, batch_size=8, grad=grad)


# --- train_epochs
def _train_epochs(net=NET, *, seed=0, grad="manual", epochs=2, **kwargs):
    optimizer = optim.make_optimizer("adam", 1e-2)
    state = train.init_train_state(net, optimizer, jax.random.key(seed))
    x, y = _data(net=net)
    return train.train_epochs(
        net,
        optimizer,
        state,
        (x, y),
        epochs=epochs,
        batch_size=BATCH,
        grad=grad,
        **kwargs,
    )


def test_train_epochs_is_bitwise_deterministic():
    state_a, logs_a, timing = _train_epochs(seed=7)
    state_b, logs_b, _ = _train_epochs(seed=7)
    assert _trees_equal(state_a.params, state_b.params)
    assert _trees_equal(state_a.opt_state, state_b.opt_state)
    assert np.array_equal(_key_data(state_a.key), _key_data(state_b.key))
    assert [log.train_loss for log in logs_a] == [log.train_loss for log in logs_b]
    # Without test data there is no evaluation.
    assert all(math.isnan(log.test_loss) for log in logs_a)
    assert all(math.isnan(log.test_accuracy) for log in logs_a)
    assert timing["eval_compile_s"] == 0.0


class _Clock:
    """A ``time`` for ``jaxbp.train`` that logs each ``perf_counter()`` reading."""

    def __init__(self, events):
        self.events = events

    def perf_counter(self):
        now = time.perf_counter()
        self.events.append(("clock", now))
        return now

    def __getattr__(self, name):
        return getattr(time, name)


def test_train_epochs_logs_epochs_and_separates_compile_time(monkeypatch):
    # One ordered log of train_epochs' clock readings and of every JAX compilation,
    # to check that no compilation falls inside a timed epoch.
    events = []

    def listener(event, duration, **kwargs):
        if "compile" in event:
            events.append(("compile", event))

    monkeypatch.setattr(train, "time", _Clock(events))
    ends = []  # number of events when each epoch ends
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state, logs, timing = _train_epochs(
            epochs=4,
            start_epoch=1,
            test_data=_data(50, seed=9),
            eval_batch_size=20,
            on_epoch=lambda state, log: ends.append((len(events), int(state.step))),
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    steps_per_epoch = N // BATCH
    assert [log.epoch for log in logs] == [2, 3, 4]
    assert [log.step for log in logs] == [k * steps_per_epoch for k in (1, 2, 3)]
    assert [step for _, step in ends] == [log.step for log in logs]
    assert int(state.step) == 3 * steps_per_epoch
    for log in logs:
        assert isinstance(log, train.EpochLog)
        assert math.isfinite(log.epoch_time_s) and log.epoch_time_s > 0
        assert log.samples_per_s == pytest.approx(
            steps_per_epoch * BATCH / log.epoch_time_s
        )
        assert math.isfinite(log.train_loss)
        assert math.isfinite(log.test_loss)
        assert 0 <= log.test_accuracy <= 1
        # A fraction of the 50 test examples.
        assert log.test_accuracy * 50 == pytest.approx(round(log.test_accuracy * 50))
    assert set(timing) >= {"compile_s", "eval_compile_s"}
    assert math.isfinite(timing["compile_s"]) and timing["compile_s"] > 0
    assert math.isfinite(timing["eval_compile_s"]) and timing["eval_compile_s"] > 0
    # The epoch and the evaluation were compiled before the first epoch ...
    assert any(kind == "compile" for kind, _ in events[: ends[0][0]])
    # ... and nothing compiled later: not inside any timed epoch, not between epochs.
    clocks = [(i, t) for i, (kind, t) in enumerate(events) if kind == "clock"]
    for log in logs:
        spans = [
            (i, j)
            for (i, start), (j, end) in zip(clocks, clocks[1:], strict=False)
            if end - start == log.epoch_time_s
        ]
        assert len(spans) == 1, "cannot find the epoch's clock readings"
        i, j = spans[0]
        assert all(kind == "clock" for kind, _ in events[i:j]), events[i:j]
    assert all(kind == "clock" for kind, _ in events[ends[0][0] :])


# --- a short real training run
def test_training_separates_gaussian_blobs_with_either_gradient():
    net = MLP((16, 32, 10), activation="relu")
    centers = 3 * np.random.default_rng(0).normal(size=(10, 16))
    train_data = _blobs(1000, seed=1, centers=centers)
    test_data = _blobs(500, seed=2, centers=centers)
    optimizer = optim.make_optimizer("adam", 1e-2, schedule="cosine", total_steps=100)
    runs = {}
    for grad in train.GRAD_KINDS:
        state = train.init_train_state(net, optimizer, jax.random.key(0))
        runs[grad] = train.train_epochs(
            net, optimizer, state, train_data, epochs=5, batch_size=50, grad=grad
        )
    evaluate = train.make_evaluate(net, batch_size=500)
    for grad, (state, logs, _) in runs.items():
        assert float(evaluate(state.params, *test_data)["accuracy"]) > 0.95, grad
        assert logs[-1].train_loss < 0.5 * logs[0].train_loss, (grad, logs)
    curves = {g: [log.train_loss for log in logs] for g, (_, logs, _) in runs.items()}
    np.testing.assert_allclose(curves["manual"], curves["autodiff"], rtol=1e-4)
    chex.assert_trees_all_close(
        runs["manual"][0].params, runs["autodiff"][0].params, rtol=1e-3, atol=1e-4
    )


def test_evaluate_under_x64_counts_in_int32():
    # With x64 on, a sum of booleans is int64; the scan's int32 counter must still fit.
    with jax.enable_x64(True):
        net = MLP((4, 5, 3), "tanh")
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(23, 4)))
        y = jnp.asarray(np.arange(23) % 3, jnp.int32)
        result = train.make_evaluate(net, batch_size=10)(params, x, y)
        expected = np.mean(np.argmax(np.asarray(net.forward(params, x)), -1) == y)
        assert int(result["correct"]) == round(expected * 23)


# --- DP-SGD as a training option
def _dp_setup():
    net = MLP((6, 5, 3), "tanh")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=8), jnp.int32)
    opt = optax.sgd(0.1)
    return net, opt, train.init_train_state(net, opt, jax.random.key(3)), x, y


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_dp_step_with_huge_clip_and_no_noise_is_the_plain_step(grad):
    net, opt, state, x, y = _dp_setup()
    plain = train.make_train_step(net, opt, grad=grad)(state, (x, y))[0]
    dp = train.DPConfig(l2_norm_clip=1e30, noise_multiplier=0.0)
    clipped = train.make_train_step(net, opt, grad=grad, dp=dp)(state, (x, y))[0]
    chex.assert_trees_all_close(clipped.params, plain.params, rtol=1e-6, atol=1e-7)


def test_dp_step_clips_each_example_and_adds_keyed_noise():
    from jaxbp import per_example

    net, opt, state, x, y = _dp_setup()
    dp = train.DPConfig(l2_norm_clip=0.05, noise_multiplier=1.0)
    step = train.make_train_step(net, opt, dp=dp)
    new, metrics = step(state, (x, y))
    # The update is -lr times the clipped mean plus the noise of this step's key.
    _, clipped = per_example.clipped_grad(
        net,
        state.params,
        x,
        y,
        l2_norm_clip=0.05,
        noise_multiplier=1.0,
        key=per_example.dp_noise_key(state.key, state.step),
    )
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, clipped)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-7)
    again, _ = step(state, (x, y))
    chex.assert_trees_all_equal(again.params, new.params)
    later, _ = step(new, (x, y))  # the next step draws other noise
    assert not np.allclose(
        np.asarray(later.params[0]["w"] - new.params[0]["w"]),
        np.asarray(new.params[0]["w"] - state.params[0]["w"]),
    )


def test_dp_step_on_a_one_device_mesh_matches_no_mesh():
    from jaxbp import parallel

    net, opt, state, x, y = _dp_setup()
    dp = train.DPConfig(l2_norm_clip=0.1, noise_multiplier=0.5)
    mesh = parallel.make_data_mesh(1)
    plain = train.make_train_step(net, opt, dp=dp)(state, (x, y))[0]
    sharded = train.make_train_step(net, opt, dp=dp, mesh=mesh)(
        parallel.replicate(state, mesh), (x, y)
    )[0]
    chex.assert_trees_all_close(sharded.params, plain.params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.0), "l2_norm_clip must be positive, got 0.0"),
        ((-1.0,), "l2_norm_clip must be positive, got -1.0"),
        ((float("nan"),), "l2_norm_clip must be positive, got nan"),
        ((1.0, -0.5), "noise_multiplier must be non-negative, got -0.5"),
        ((1.0, float("nan")), "noise_multiplier must be non-negative"),
        (("1.0",), "l2_norm_clip must be a number, got '1.0'"),
        ((True,), "l2_norm_clip must be a number"),
        ((1.0, None), "noise_multiplier must be a number, got None"),
        ((np.ones(2),), "l2_norm_clip must be a number"),
    ],
)
def test_dp_config_is_checked_when_made(args, match):
    # The boundary is the value itself: the training step trusts a DPConfig.
    with pytest.raises(ValueError, match=match):
        train.DPConfig(*args)


def test_dp_config_is_a_hashable_value_of_floats():
    dp = train.DPConfig(np.float32(1), 1)
    assert dp == train.DPConfig(1.0, 1.0)
    assert type(dp.l2_norm_clip) is float and type(dp.noise_multiplier) is float
    assert hash(dp) == hash(train.DPConfig(1.0, 1.0))
    assert train.DPConfig(jnp.asarray(0.5)).l2_norm_clip == 0.5
    assert train.DPConfig(float("inf")).l2_norm_clip == float("inf")  # no clipping
    with pytest.raises(dataclasses.FrozenInstanceError):
        dp.l2_norm_clip = 2.0
    with pytest.raises(ValueError, match="l2_norm_clip must be positive"):
        dataclasses.replace(dp, l2_norm_clip=0.0)


# --- Sequential networks: running statistics, dropout keys, evaluation
def _seq_net(spec="dense(8),bn,relu,dropout(0.5),dense(3)"):
    from jaxbp import models
    from jaxbp.sequential import Sequential

    return Sequential(models.parse(spec), input_shape=(6,))


SEQ = _seq_net()


def test_sequential_steps_agree_and_update_running_statistics():
    optimizer = optax.sgd(0.1)
    state0 = train.init_train_state(SEQ, optimizer, jax.random.key(0))
    bn0 = state0.model_state[1]
    assert np.all(np.asarray(bn0["mean"]) == 0) and np.all(np.asarray(bn0["var"]) == 1)
    x, y = _data()
    final = {}
    for grad in train.GRAD_KINDS:
        step = train.make_train_step(SEQ, optimizer, grad=grad)
        state, losses = state0, []
        for i in range(3):
            state, metrics = step(
                state, (x[32 * i : 32 * (i + 1)], y[32 * i : 32 * i + 32])
            )
            losses.append(metrics["loss"])
        final[grad] = state, losses
    (manual, m_losses), (auto, a_losses) = final["manual"], final["autodiff"]
    chex.assert_trees_all_close(manual.params, auto.params, **CLOSE["float32"])
    chex.assert_trees_all_close(manual.model_state, auto.model_state, rtol=1e-5)
    chex.assert_trees_all_close(m_losses, a_losses, rtol=1e-5)
    # Three steps of running averages (momentum 0.9) have moved away from 0 and 1.
    assert not np.allclose(manual.model_state[1]["mean"], 0)
    assert not np.allclose(manual.model_state[1]["var"], 1)
    assert all(s == {} for i, s in enumerate(manual.model_state) if i != 1)


def test_sequential_dropout_masks_are_keyed_by_step():
    optimizer = optax.sgd(0.1)
    state = train.init_train_state(SEQ, optimizer, jax.random.key(0))
    x, y = _data(BATCH)
    step = train.make_train_step(SEQ, optimizer)
    a, _ = step(state, (x, y))
    b, _ = step(state, (x, y))
    chex.assert_trees_all_equal(a.params, b.params)  # the same key: the same masks
    later = state._replace(step=state.step + 1)  # another step: other masks
    c, _ = step(later, (x, y))
    assert not np.allclose(c.params[0]["w"], a.params[0]["w"])
    # Without dropout the step number does not matter.
    plain = _seq_net("dense(8),bn,relu,dense(3)")
    state = train.init_train_state(plain, optimizer, jax.random.key(0))
    step = train.make_train_step(plain, optimizer)
    d, _ = step(state, (x, y))
    e, _ = step(state._replace(step=state.step + 1), (x, y))
    chex.assert_trees_all_equal(d.params, e.params)


def test_dropout_key_is_its_own_stream():
    from jaxbp import per_example

    key = jax.random.key(3)
    keys = [train.dropout_key(key, step) for step in (0, 1)]
    others = [*jax.random.split(key), per_example.dp_noise_key(key, 0)]
    datas = [_key_data(k).tobytes() for k in keys + others]
    assert len(set(datas)) == len(datas)


def test_evaluate_uses_the_running_statistics():
    params = SEQ.init(jax.random.key(1))
    state = SEQ.init_state()
    moved = [dict(s) for s in state]
    moved[1] = {"mean": jnp.full((8,), 0.5), "var": jnp.full((8,), 4.0)}
    x, y = _data(50, seed=2)
    evaluate = train.make_evaluate(SEQ, batch_size=20)
    forward = jax.jit(lambda p, x, s: SEQ.forward(p, x, state=s))  # evaluation mode
    for model_state in (state, moved):
        result = evaluate(params, x, y, model_state)
        out = forward(params, x, model_state)
        correct = int(np.sum(np.argmax(out, -1) == y))
        assert int(result["correct"]) == correct
        loss = SEQ.loss_fn.per_example(out, jax.nn.one_hot(y, 3)).mean()
        np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)
    assert (
        evaluate(params, x, y, state)["loss"] != evaluate(params, x, y, moved)["loss"]
    )


def test_dp_step_of_a_sequential_draws_its_dropout_masks_by_step():
    from jaxbp import per_example

    net = _seq_net("dense(8),ln,relu,dropout(0.5),dense(3)")
    opt = optax.sgd(0.1)
    state = train.init_train_state(net, opt, jax.random.key(3))
    x, y = _data(8)
    dp = train.DPConfig(l2_norm_clip=0.05, noise_multiplier=1.0)
    new, _ = train.make_train_step(net, opt, dp=dp)(state, (x, y))
    clipped_grad = jax.jit(
        functools.partial(
            per_example.clipped_grad, net, l2_norm_clip=0.05, noise_multiplier=1.0
        )
    )
    _, clipped = clipped_grad(
        state.params,
        x,
        y,
        key=per_example.dp_noise_key(state.key, state.step),
        dropout_key=train.dropout_key(state.key, state.step),
    )
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, clipped)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-7)


def test_sequential_refuses_dp_with_batchnorm_and_data_parallel_batchnorm():
    from jaxbp import parallel

    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"DP-SGD .* layer 2 of 5, BatchNorm\(\)"):
        train.make_train_step(SEQ, optimizer, dp=train.DPConfig(1.0))
    mesh = parallel.make_data_mesh(1)
    with pytest.raises(ValueError, match="network with BatchNorm is not supported"):
        train.make_train_epoch(SEQ, optimizer, batch_size=8, mesh=mesh)
    dropout = _seq_net("dense(8),relu,dropout(0.5),dense(3)")
    with pytest.raises(ValueError, match="network with Dropout is not supported"):
        train.make_train_step(dropout, optimizer, mesh=mesh)


def test_sequential_without_state_on_a_mesh_matches_no_mesh():
    from jaxbp import parallel

    net = _seq_net("reshape(2,3),flatten,dense(5),tanh,dense(3)")
    optimizer = optax.sgd(0.1)
    state = train.init_train_state(net, optimizer, jax.random.key(0))
    x, y = _data(BATCH)
    mesh = parallel.make_data_mesh(1)
    plain = train.make_train_step(net, optimizer)(state, (x, y))[0]
    sharded = train.make_train_step(net, optimizer, mesh=mesh)(
        parallel.replicate(state, mesh), (x, y)
    )[0]
    chex.assert_trees_all_close(sharded.params, plain.params, rtol=1e-6, atol=1e-7)


# --- progress while an epoch runs
def test_progress_callback_leaves_the_epoch_bitwise_unchanged():
    optimizer = optim.make_optimizer("adam", 1e-2)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    x, y = _data(100)  # 12 batches of 8
    calls = []
    plain = train.make_train_epoch(NET, optimizer, batch_size=8)
    reporting = train.make_train_epoch(
        NET,
        optimizer,
        batch_size=8,
        on_steps=lambda done, total: calls.append((done, total)),
        report_every=5,
    )
    a, metrics_a = plain(state, x, y)
    b, metrics_b = reporting(state, x, y)
    assert _trees_equal(a._replace(key=None), b._replace(key=None))
    assert np.array_equal(_key_data(a.key), _key_data(b.key))
    assert _trees_equal(metrics_a, metrics_b)
    jax.effects_barrier()
    assert sorted(calls) == [(5, 12), (10, 12)]
    calls.clear()  # the interval may change from call to call, without a recompile
    reporting(state, x, y, jnp.asarray(4, jnp.int32))
    reporting(state, x, y, jnp.asarray(13, jnp.int32))  # longer than the epoch
    jax.effects_barrier()
    assert sorted(calls) == [(4, 12), (8, 12), (12, 12)]
    if hasattr(reporting, "_cache_size"):
        assert reporting._cache_size() == 2  # the default, and any array
    with pytest.raises(ValueError, match="report_every"):
        train.make_train_epoch(NET, optimizer, batch_size=8, report_every=0)


def test_train_epochs_reports_progress_of_every_epoch_at_its_pace(monkeypatch):
    seen = []
    _train_epochs(epochs=3, on_progress=seen.append)
    steps = N // BATCH
    by_epoch = {e: [p for p in seen if p.epoch == e] for e in (1, 2, 3)}
    for mine in by_epoch.values():
        assert mine[0].done == 0 and mine[-1].done == steps
        assert all(p.steps == steps and p.epochs == 3 for p in mine)
        assert all(p.elapsed_s >= 0 for p in mine)
    # The first epoch reports every fifth of its steps (of 3: each); it took far
    # less than PROGRESS_INTERVAL_S, so the next ones report only (from the host)
    # their start and end.
    assert {p.done for p in by_epoch[1]} == set(range(steps + 1))
    assert {p.done for p in by_epoch[2]} == {p.done for p in by_epoch[3]} == {0, steps}
    # An epoch much slower than PROGRESS_INTERVAL_S makes the next report each step.
    monkeypatch.setattr(train, "PROGRESS_INTERVAL_S", 1e-9)
    seen.clear()
    _train_epochs(epochs=2, on_progress=seen.append)
    assert {p.done for p in seen if p.epoch == 2} == set(range(steps + 1))


def test_ctrl_c_in_a_progress_report_ends_training_as_a_keyboard_interrupt(
    monkeypatch,
):
    # A SIGINT lands in whatever Python runs, here the report from inside the
    # compiled epoch; raised there, XLA would turn it into an internal runtime error.
    monkeypatch.setattr(train, "PROGRESS_INTERVAL_S", 1e-9)  # report every step
    ended = []

    def on_progress(p):
        if p.epoch == 2 and 0 < p.done < p.steps:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_epochs(
            epochs=3,
            on_progress=on_progress,
            on_epoch=lambda state, log: ended.append(log.epoch),
        )
    assert ended == [1]  # the interrupted epoch is not kept


# --- an epoch's steps from a Python loop (XLA:CPU's slow autodiff conv in a scan)
@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_host_loop_epoch_takes_the_scans_steps(grad):
    from jaxbp import Sequential, models

    net = Sequential(
        models.parse("reshape(6,6,1),conv(3,3),relu,dropout(0.25),flatten,dense(3)"),
        input_shape=(36,),
    )
    optimizer = optim.make_optimizer("adam", 1e-2)
    state = train.init_train_state(net, optimizer, jax.random.key(0))
    x, y = _data(100, net=MLP((36, 3)))  # 12 batches of 8
    calls = []
    epochs = {
        loop: train.make_train_epoch(
            net,
            optimizer,
            batch_size=8,
            grad=grad,
            loop=loop,
            on_steps=lambda done, total: calls.append((done, total)),
            report_every=5,
        )
        for loop in train.LOOPS
    }
    scan, scan_metrics = epochs["scan"](state, x, y)
    jax.effects_barrier()
    assert sorted(calls) == [(5, 12), (10, 12)]
    calls.clear()
    host_epoch = epochs["host"].lower(state, x, y).compile()
    host, host_metrics = host_epoch(state, x, y)
    assert calls == [(5, 12), (10, 12)]
    assert int(host.step) == int(scan.step) == 12
    assert np.array_equal(_key_data(host.key), _key_data(scan.key))
    chex.assert_trees_all_close(host.params, scan.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(host_metrics, scan_metrics, rtol=1e-5, atol=1e-6)
    # A second epoch from the result continues the same way.
    chex.assert_trees_all_close(
        host_epoch(host, x, y)[0].params,
        epochs["scan"](scan, x, y)[0].params,
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="loop must be one of"):
        train.make_train_epoch(net, optimizer, batch_size=8, loop="python")


def test_default_loop_is_the_host_only_for_autodiff_convolutions_on_a_cpu():
    from jaxbp import Sequential, models

    conv = Sequential(models.parse(models.canonical("lenet")), input_shape=(784,))
    on_cpu = jax.default_backend() == "cpu"
    assert train.default_loop(conv, "autodiff") == ("host" if on_cpu else "scan")
    assert train.default_loop(conv, "manual") == "scan"
    assert train.default_loop(NET, "autodiff") == "scan"
