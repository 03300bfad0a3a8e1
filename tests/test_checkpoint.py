"""Checkpoints: bitwise round trips, clear errors, atomic writes, permissions."""

import os
import pathlib
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import checkpoint, optim, train
from jaxbp.checkpoint import CheckpointError
from jaxbp.mlp import MLP

NET = MLP((5, 4, 3), activation="tanh")


# --- helpers
def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_trees_equal(a, b):
    """Same structure, dtypes and bits."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype
        assert x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _assert_states_equal(a, b):
    _assert_trees_equal(a.params, b.params)
    _assert_trees_equal(a.opt_state, b.opt_state)
    _assert_trees_equal(a.step, b.step)
    assert jax.random.key_impl(a.key) == jax.random.key_impl(b.key)
    np.testing.assert_array_equal(
        jax.random.key_data(a.key), jax.random.key_data(b.key)
    )


def _template(name="adam", net=NET, seed=123, **kwargs):
    """A fresh state built like the saved one (different values)."""
    optimizer = optim.make_optimizer(name, 1e-2, **kwargs)
    return train.init_train_state(net, optimizer, jax.random.key(seed))


@pytest.fixture(scope="module")
def adam_state():
    """An adam state three steps into training (non-trivial moments and count)."""
    optimizer = optim.make_optimizer("adam", 1e-2)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    step = train.make_train_step(NET, optimizer)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, NET.sizes[0])).astype(np.float32)
    y = rng.integers(0, NET.sizes[-1], 8).astype(np.int32)
    for _ in range(3):
        state, _ = step(state, (x, y))
    # Advance the key as an epoch would, so that it differs from a fresh one.
    return state._replace(key=jax.random.split(state.key)[1])


@pytest.fixture
def saved(tmp_path, adam_state):
    """``(path, state)``: ``adam_state`` saved to ``tmp_path/run/checkpoint.npz``."""
    path = checkpoint.save_checkpoint(
        tmp_path / "run" / "checkpoint.npz",
        adam_state,
        NET,
        meta={"epoch": 3, "config": {"lr": 0.01}},
    )
    return path, adam_state


# --- round trips
def test_save_then_restore_is_bitwise(saved):
    path, state = saved
    assert path.is_file()
    restored, meta = checkpoint.restore_train_state(path, _template())
    _assert_states_equal(restored, state)
    assert int(restored.step) == 3
    assert meta["epoch"] == 3
    assert meta["config"] == {"lr": 0.01}


def test_restored_state_trains_on_identically(saved):
    path, state = saved
    restored, _ = checkpoint.restore_train_state(path, _template())
    optimizer = optim.make_optimizer("adam", 1e-2)
    step = train.make_train_step(NET, optimizer)
    x = np.linspace(-1, 1, 8 * NET.sizes[0], dtype=np.float32).reshape(8, -1)
    y = np.arange(8, dtype=np.int32) % NET.sizes[-1]
    a, _ = step(state, (x, y))
    b, _ = step(restored, (x, y))
    _assert_states_equal(a, b)


@pytest.mark.parametrize(
    "net",
    [
        NET,
        MLP((5, 4, 3, 2), "sigmoid", "sigmoid", "half_sse"),
        MLP((5, 1), "relu", "identity", "mse"),
    ],
    ids=str,
)
def test_load_checkpoint_returns_the_spec_params_and_meta(tmp_path, net):
    optimizer = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(net, optimizer, jax.random.key(2))
    path = checkpoint.save_checkpoint(
        tmp_path / "c.npz", state, net, meta={"history": [{"epoch": 1}]}
    )
    loaded_net, params, meta = checkpoint.load_checkpoint(path)
    assert loaded_net == net
    assert isinstance(loaded_net.sizes, tuple)
    _assert_trees_equal(params, state.params)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    assert meta["history"] == [{"epoch": 1}]
    assert meta["net"]["sizes"] == list(net.sizes)
    _assert_trees_equal(checkpoint.load_params(path), state.params)


def test_save_creates_folders_and_overwrites(tmp_path, adam_state):
    path = tmp_path / "a" / "b" / "checkpoint.npz"
    checkpoint.save_checkpoint(path, adam_state, NET, meta={"epoch": 1})
    later = adam_state._replace(step=adam_state.step + 10)
    checkpoint.save_checkpoint(path, later, NET, meta={"epoch": 2})
    restored, meta = checkpoint.restore_train_state(path, _template())
    assert int(restored.step) == 13
    assert meta["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.npz"]


# --- missing and corrupt files
def test_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "nope" / "checkpoint.npz"
    for load in (checkpoint.load_checkpoint, checkpoint.load_params):
        with pytest.raises(CheckpointError, match="no checkpoint at .*checkpoint.npz"):
            load(path)
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.restore_train_state(path, _template())
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        checkpoint.load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, 0.99, -1])
def test_truncated_checkpoint_names_the_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"checkpoint\.npz.*corrupt or truncated"):
        checkpoint.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.npz"):
        checkpoint.restore_train_state(path, _template())


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"this is not a zip file\n" * 10)
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load_checkpoint(path)


def _write_other_file(path: pathlib.Path, kind: str) -> None:
    """A file at ``path`` that is not a jaxbp checkpoint."""
    with open(path, "wb") as f:
        if kind == "text":
            f.write(b"epoch 1 loss 0.5\n" * 10)
        elif kind == "npy":
            np.save(f, np.arange(3))
        elif kind == "npz":
            np.savez(f, x=np.arange(3))
        elif kind == "pickled npz":
            np.savez(f, meta=np.array([{"epoch": 1}], dtype=object))
        elif kind == "meta not a record":
            np.savez(f, meta=np.frombuffer(b"[1, 2]", np.uint8))
        elif kind == "meta without net":
            np.savez(f, meta=np.frombuffer(b'{"format": 1}', np.uint8))


@pytest.mark.parametrize(
    "kind",
    ["text", "npy", "npz", "pickled npz", "meta not a record", "meta without net"],
)
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, kind):
    path = tmp_path / "checkpoint.npz"
    _write_other_file(path, kind)
    for load in (
        checkpoint.load_checkpoint,
        checkpoint.read_meta,
        lambda p: checkpoint.restore_train_state(p, _template()),
    ):
        if kind == "meta without net" and load is checkpoint.read_meta:
            continue  # its meta can be read; it only lacks what loading needs
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a jaxbp checkpoint"), message
        assert "pickle" not in message  # not numpy's advice to load it unsafely
        assert "save_checkpoint" in message and "jaxbp train" in message


def test_flipped_data_byte_is_detected(saved):
    # A bit flip inside an array's bytes fails the zip CRC check.
    path, state = saved
    data = bytearray(path.read_bytes())
    w_bytes = np.asarray(state.params[0]["w"]).tobytes()
    i = bytes(data).index(w_bytes) + 5
    data[i] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load_checkpoint(path)


def test_corrupt_zip_directory_raises_checkpoint_error(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    # The compression method of the first central-directory entry: 99 (AES).
    i = bytes(data).index(b"PK\x01\x02") + 10
    data[i : i + 2] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load_checkpoint(path)


def _rewrite_npz(path, *, drop=(), meta=None):
    """Rewrites a checkpoint without the entries ``drop`` (and with ``meta``)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in drop}
    if meta is not None:
        arrays["meta"] = np.frombuffer(meta.encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("drop", ["meta", "params/1/w"])
def test_incomplete_checkpoint_raises_checkpoint_error(saved, drop):
    path, _ = saved
    _rewrite_npz(path, drop=[drop])
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("drop", ["step", "key", "opt_state/0"])
def test_restore_of_incomplete_checkpoint_raises_checkpoint_error(saved, drop):
    path, _ = saved
    _rewrite_npz(path, drop=[drop])
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.restore_train_state(path, _template())


def test_unknown_format_version_is_rejected(saved):
    path, _ = saved
    _rewrite_npz(path, meta='{"format": 99, "net": {}}')
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.load_checkpoint(path)


# --- restoring into the wrong template
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {}),
        ("momentum", {}),
        ("rmsprop", {}),
        ("adam", {"schedule": "cosine", "total_steps": 10}),
    ],
)
def test_restore_into_another_optimizer_fails_clearly(saved, name, kwargs):
    path, _ = saved
    with pytest.raises(CheckpointError, match="another optimizer") as info:
        checkpoint.restore_train_state(path, _template(name, **kwargs))
    assert str(path) in str(info.value)


def test_restore_into_another_width_fails_clearly(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match="holds parameters .* the run expects"):
        checkpoint.restore_train_state(path, _template(net=MLP((5, 6, 3), "tanh")))


def test_restore_into_a_deeper_network_fails_clearly(saved):
    path, _ = saved
    deeper = MLP((5, 4, 3, 3), "tanh")  # the first two layers match NET's
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.restore_train_state(path, _template(net=deeper))


def test_restore_into_another_dtype_fails_clearly(tmp_path):
    with jax.enable_x64(True):
        optimizer = optim.make_optimizer("sgd", 0.1)
        state = train.init_train_state(
            NET, optimizer, jax.random.key(0), dtype=jnp.float64
        )
        path = checkpoint.save_checkpoint(tmp_path / "c.npz", state, NET)
        template = train.init_train_state(
            NET, optimizer, jax.random.key(0), dtype=jnp.float32
        )
        with pytest.raises(CheckpointError, match="float64.*float32"):
            checkpoint.restore_train_state(path, template)
        restored, _ = checkpoint.restore_train_state(path, state)
        _assert_trees_equal(restored.params, state.params)


# --- atomic writes
def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("target", ["replace", "fsync"])
@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=repr)
def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch, target, exc):
    path, state = saved
    before = path.read_bytes()
    newer = state._replace(step=state.step + 1)
    with monkeypatch.context() as m:
        m.setattr(os, target, _raise(exc))
        with pytest.raises(type(exc)):
            checkpoint.save_checkpoint(path, newer, NET, meta={"epoch": 4})
    assert path.read_bytes() == before
    restored, meta = checkpoint.restore_train_state(path, _template())
    _assert_states_equal(restored, state)
    assert meta["epoch"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.npz"]


def test_failed_first_save_leaves_nothing(tmp_path, adam_state, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    monkeypatch.setattr(os, "replace", _raise(OSError("no")))
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, adam_state, NET)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_checkpoint_permissions_are_0644(tmp_path, adam_state, umask):
    path = tmp_path / "checkpoint.npz"
    old = os.umask(umask)
    try:
        checkpoint.save_checkpoint(path, adam_state, NET)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        checkpoint.save_checkpoint(path, adam_state, NET)  # over an existing file
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_save_returns_a_path(tmp_path, adam_state):
    result = checkpoint.save_checkpoint(str(tmp_path / "c.npz"), adam_state, NET)
    assert isinstance(result, pathlib.Path)
    assert result == tmp_path / "c.npz"


# --- Sequential networks
def _sequential():
    from jaxbp import models
    from jaxbp.sequential import Sequential

    spec = "reshape(5,1,1),conv(2,1),bn,relu,flatten,res(dense(10),bn),dense(3)"
    return Sequential(models.parse(spec), input_shape=(5,))


def _sequential_state(net, seed=0):
    """A state whose every leaf differs from a fresh one's (as after training)."""
    optimizer = optim.make_optimizer("adam", 1e-2)
    state = train.init_train_state(net, optimizer, jax.random.key(seed))
    rng = np.random.default_rng(seed)

    def moved(leaf):
        return jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype)

    return state._replace(
        params=jax.tree.map(moved, state.params),
        opt_state=jax.tree.map(moved, state.opt_state),
        model_state=jax.tree.map(moved, state.model_state),
        step=jnp.asarray(7, jnp.int32),
    )


def test_sequential_round_trip_is_bitwise(tmp_path):
    net = _sequential()
    state = _sequential_state(net)
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", state, net, meta={"e": 1})
    with np.load(path) as saved:
        names = set(saved.files)
    assert {"params/1/w", "params/2/g", "params/5/0/w", "params/5/1/b"} <= names
    assert {"model_state/2/mean", "model_state/5/1/var"} <= names
    restored, meta = checkpoint.restore_train_state(path, _template(net=net, seed=5))
    _assert_states_equal(restored, state)
    _assert_trees_equal(restored.model_state, state.model_state)
    assert meta["e"] == 1
    loaded, params, meta = checkpoint.load_checkpoint(path)
    assert loaded == net and meta["net"]["input_shape"] == [5]
    _assert_trees_equal(params, state.params)
    _assert_trees_equal(checkpoint.load_model_state(path), state.model_state)


def test_an_mlp_checkpoint_keeps_its_names_and_has_no_model_state(saved):
    path, state = saved
    with np.load(path) as data:
        names = set(data.files)
    params = {f"params/{l}/{n}" for l in range(NET.depth) for n in ("w", "b")}
    opt = {f"opt_state/{i}" for i in range(len(jax.tree.leaves(state.opt_state)))}
    assert names == params | opt | {"step", "key", "meta"}
    assert checkpoint.load_model_state(path) is None
    assert checkpoint.restore_train_state(path, _template())[0].model_state is None


def test_restore_into_another_kind_of_network_fails_clearly(tmp_path, saved):
    net = _sequential()
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", _sequential_state(net), net)
    with pytest.raises(CheckpointError, match="do not fit the run's network"):
        checkpoint.restore_train_state(
            path, _template(net=MLP((5, 4, 3, 2, 3, 3, 3, 3)))
        )
    mlp_path, _ = saved
    with pytest.raises(CheckpointError, match=str(mlp_path)):
        checkpoint.restore_train_state(mlp_path, _template(net=net))


def test_a_spec_this_jaxbp_cannot_build_is_named(tmp_path):
    net = _sequential()
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", _sequential_state(net), net)
    meta = checkpoint.read_meta(path)
    meta["net"]["spec"] = "dense(3),warp(9)"
    _rewrite_npz(path, meta=__import__("json").dumps(meta))
    with pytest.raises(CheckpointError, match="cannot build: spec .*'warp'"):
        checkpoint.load_checkpoint(path)
