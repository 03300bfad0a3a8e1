"""TrainConfig, setup and fit: one description of a run, one path from it to results."""

import contextlib
import dataclasses
import io
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
import jaxbp.data
from jaxbp import cli, optim, train
from jaxbp.cli import train as train_cli
from jaxbp.config import ConfigError, TrainConfig, fit, setup

TRAINING_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "training.md"
NUM_TRAIN, NUM_TEST = 300, 50
_REAL_LOAD_DATASET = jaxbp.data.load_dataset


# --- helpers
def _tiny(n, seed):
    """``n`` flat uint8 'images' whose class ``c`` has bright pixels ``70c..70c+70``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.integers(0, 60, (n, 784)).astype(np.uint8)
    for c in range(10):
        x[y == c, 70 * c : 70 * c + 70] = 250
    return x, y


TRAIN, TEST = _tiny(NUM_TRAIN, 0), _tiny(NUM_TEST, 1)
SMALL = TrainConfig(hidden=(8,), batch_size=50, epochs=2)


def _trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def _write_dataset(folder: pathlib.Path) -> None:
    """``TRAIN`` and ``TEST`` as the four IDX files of a dataset in ``folder``."""
    folder.mkdir(parents=True)
    for prefix, (x, y) in (("train", TRAIN), ("t10k", TEST)):
        images = x.reshape(-1, 28, 28)
        jaxbp.data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        labels = y.astype(np.uint8)
        jaxbp.data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _load_any_size(name, split, **kwargs):
    """``load_dataset`` without the check that a split holds 60,000/10,000 images."""
    spec = jaxbp.data.dataset_spec(name)
    splits = {k: v._replace(num_examples=None) for k, v in spec.splits.items()}
    return _REAL_LOAD_DATASET(dataclasses.replace(spec, splits=splits), split, **kwargs)


# --- TrainConfig
def test_defaults_are_those_of_jaxbp_train():
    args = cli.build_parser().parse_args(["train"])
    assert train_cli.config_from_args(args) == TrainConfig()
    config = TrainConfig()
    assert config.sizes == (784, 100, 10)
    assert config.lr == optim.DEFAULT_LEARNING_RATES["adam"]
    assert str(config.mlp) == "MLP(784-100-10, relu/identity, softmax_cross_entropy)"
    assert config.dp is None


def test_cli_flag_defaults_come_from_the_dataclass():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[
        "train"
    ]
    defaults = {a.dest: a.default for a in sub._actions}
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("hidden", "lr"):  # None: the dataclass resolves them
            assert defaults[field.name] is None
        else:
            assert defaults[field.name] == field.default, field.name


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_lr_none_is_the_optimizers_default(name):
    assert TrainConfig(optimizer=name).lr == optim.DEFAULT_LEARNING_RATES[name]
    assert TrainConfig(optimizer=name, lr=0.125).lr == 0.125


def test_normalises_its_values():
    config = TrainConfig(dataset="fashion-mnist", hidden=[32, np.int64(16)], lr=1)
    assert config.dataset == "fashion_mnist"
    assert config.hidden == (32, 16) and all(type(w) is int for w in config.hidden)
    assert config.lr == 1.0 and type(config.lr) is float
    assert TrainConfig(hidden=()).sizes == (784, 10)
    assert TrainConfig(dp_clip=1, dp_noise=1.1).dp == train.DPConfig(1.0, 1.1)


def test_is_frozen_and_hashable():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert hash(config) == hash(TrainConfig()) and config == TrainConfig()
    assert {config: 1}[TrainConfig(lr=2e-3)] == 1


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"dataset": "cifar10"}, "dataset must be one of"),
        ({"hidden": (16, 0)}, "hidden must be a tuple of positive integers"),
        ({"hidden": 16}, "hidden must be a tuple of positive integers"),
        ({"hidden": (1.5,)}, "hidden must be"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"output_activation": "softmax"}, "output_activation must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"grad": "numeric"}, "grad must be one of manual, autodiff"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"lr": "0.1"}, "lr must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 6.4}, "batch_size must be a positive integer"),
        ({"epochs": -1}, "epochs must be a positive integer"),
        ({"epochs": True}, "epochs must be a positive integer"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"dp_clip": 0.0}, "dp_clip must be a positive number"),
        ({"dp_clip": 1.0, "dp_noise": -1.0}, "dp_noise must be a non-negative"),
        ({"dp_noise": 1.0}, "dp_noise 1 needs dp_clip"),
        ({"output_activation": "sigmoid"}, "requires output_activation='identity'"),
    ],
)
def test_invalid_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        TrainConfig(**settings)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"grad": "numeric"}, "grad"),
        ({"batch_size": 0}, "batch_size"),
        ({"dp_noise": 1.0}, "dp_noise"),
        ({"grad": "manual", "align_every": 2}, "align_every"),
        ({"grad": "direct-feedback-alignment", "model": "lenet"}, "grad"),
        ({"grad": "feedback-alignment", "dp_clip": 1.0}, "dp_clip"),
        ({"output_activation": "sigmoid"}, "output_activation"),
        ({"model": "flatten,dense(5)"}, "model"),
    ],
)
def test_invalid_settings_carry_their_field(settings, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**settings)
    assert isinstance(info.value, ValueError) and info.value.field == field


def test_dict_round_trip_through_json():
    config = TrainConfig(hidden=(512, 512), optimizer="sgd", dp_clip=1.0, seed=3)
    record = json.loads(json.dumps(config.to_dict()))
    assert record["hidden"] == [512, 512]
    assert TrainConfig.from_dict(record) == config


def test_from_dict_rejects_unknown_settings():
    record = TrainConfig().to_dict() | {"sizes": [784, 100, 10]}
    with pytest.raises(ValueError, match="unknown training settings: sizes"):
        TrainConfig.from_dict(record)


def test_differences_name_each_setting_with_both_values():
    a = TrainConfig()
    b = TrainConfig(hidden=(30,), optimizer="sgd", seed=2)
    assert a.differences(a) == []
    assert a.differences(b) == [
        ("hidden", (100,), (30,)),
        ("optimizer", "adam", "sgd"),
        ("lr", 2e-3, 1.0),
        ("seed", 0, 2),
    ]
    assert b.differences(a) == [(n, new, old) for n, old, new in a.differences(b)]


# --- model: a preset or a spec instead of the MLP
TINY_MODEL = (
    "reshape(28,28,1),avgpool(4),flatten,dense(8),bn,relu,dropout(0.5),dense(10)"
)


def test_model_is_stored_as_its_canonical_spec():
    assert TrainConfig().model is None and TrainConfig(model="MLP").model is None
    lenet = TrainConfig(model="lenet")
    assert lenet.model == jaxbp.models.PRESETS["lenet"]
    assert lenet == TrainConfig(model=" LeNet ")
    assert lenet == TrainConfig(model=lenet.model.upper().replace(",", ", "))
    net = lenet.net
    assert isinstance(net, jaxbp.Sequential) and net.input_shape == (784,)
    assert net.objective == lenet.loss and net.num_outputs == 10
    assert TrainConfig().net == TrainConfig().mlp
    assert TrainConfig(model="lenet", dp_clip=1.0).dp == train.DPConfig(1.0, 0.0)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"model": "lenet5"}, "model spec 'lenet5', at 'lenet5' (character 1)"),
        ({"model": 5}, "model must be None, a preset name or a spec string"),
        ({"model": "lenet", "hidden": (30,)}, "model conflicts with hidden"),
        (
            {"model": "lenet", "activation": "tanh", "output_activation": "sigmoid"},
            "model conflicts with activation and output_activation",
        ),
        ({"model": "flatten,dense(5)"}, "model ends with 5 outputs but fashion_mnist"),
        (
            {"model": "conv(4,3),flatten,dense(10)"},
            "model does not fit fashion_mnist's flat (784,) inputs: layer 1 Conv2D",
        ),
        ({"model": "dense(10),relu"}, "model does not fit the softmax_cross_entropy"),
        (
            {"model": "bn-res", "dp_clip": 1.0},
            "DP-SGD (dp_clip) needs per-example gradients: per-example gradients are "
            "not defined for layer 3 of 13, BatchNorm()",
        ),
    ],
)
def test_invalid_models_are_named(settings, match):
    with pytest.raises(ValueError, match=re.escape(match)) as info:
        TrainConfig(**settings)
    assert "\n" not in str(info.value)


def test_model_round_trips_and_differs_by_name():
    config = TrainConfig(model=TINY_MODEL, epochs=3)
    record = json.loads(json.dumps(config.to_dict()))
    assert record["model"] == config.model
    assert TrainConfig.from_dict(record) == config
    assert TrainConfig().differences(config) == [
        ("epochs", 10, 3),
        ("model", None, config.model),
    ]
    # A record written before the setting existed is an MLP run.
    old = TrainConfig().to_dict()
    del old["model"]
    assert TrainConfig.from_dict(old) == TrainConfig()


def test_setup_of_a_model_builds_its_sequential_and_state():
    config = dataclasses.replace(SMALL, hidden=(100,), model=TINY_MODEL)
    run = setup(config, train_data=TRAIN, test_data=TEST)
    assert run.net == config.net and isinstance(run.net, jaxbp.Sequential)
    bn = run.state.model_state[4]
    assert set(bn) == {"mean", "var"} and bn["mean"].shape == (8,)
    assert run.state.model_state[0] == {}
    # (tests/test_cli.py trains a model through setup and fit.)


# --- setup
def test_setup_builds_net_optimizer_data_and_state():
    run = setup(SMALL, train_data=TRAIN, test_data=TEST)
    assert run.config is SMALL
    assert run.net == jaxbp.MLP((784, 8, 10), "relu")
    assert run.train_data is TRAIN and run.test_data is TEST
    assert int(run.state.step) == 0
    # The parameters are those of the seed, as train.init_train_state draws them.
    expected = train.init_train_state(run.net, run.optimizer, jax.random.key(0))
    assert _trees_equal(run.state.params, expected.params)
    assert _trees_equal(run.state.opt_state, expected.opt_state)
    # (The schedule's length, epochs * (N // B), is checked by training below.)


def test_setup_loads_the_dataset_as_jaxbp_train_does(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    _write_dataset(folder)
    monkeypatch.setattr(jaxbp.data, "load_dataset", _load_any_size)
    run = setup(SMALL, data_dir=folder)
    (x, y), (xt, yt) = run.train_data, run.test_data
    assert x.dtype == np.uint8 and x.shape == (NUM_TRAIN, 784)
    assert y.dtype == np.int32 and np.array_equal(y, TRAIN[1])
    assert np.array_equal(x, TRAIN[0]) and np.array_equal(xt, TEST[0])
    assert np.array_equal(yt, TEST[1])


def test_setup_rejects_a_batch_larger_than_the_data():
    config = dataclasses.replace(SMALL, batch_size=NUM_TRAIN + 1)
    with pytest.raises(ValueError, match="batch_size 301 exceeds the 300 training"):
        setup(config, train_data=TRAIN, test_data=TEST)


def test_setup_float64_needs_x64():
    config = dataclasses.replace(SMALL, dtype="float64")
    with pytest.raises(ValueError, match="float64 needs x64"):
        setup(config, train_data=TRAIN, test_data=TEST)
    with jax.enable_x64(True):
        run = setup(config, train_data=TRAIN, test_data=TEST)
        assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(run.state.params))


# --- fit
def test_fit_is_train_epochs_with_the_configs_settings():
    # Bitwise equal to train.train_epochs with a cosine schedule over 2 * (300 // 50)
    # steps.
    run = setup(SMALL, train_data=TRAIN, test_data=TEST)
    state, logs, _ = fit(run)
    expected, expected_logs, _ = train.train_epochs(
        run.net,
        optim.make_optimizer(
            "adam", 2e-3, schedule="cosine", total_steps=2 * (NUM_TRAIN // 50)
        ),
        run.state,
        TRAIN,
        epochs=2,
        batch_size=50,
        grad="manual",
        test_data=TEST,
    )
    assert _trees_equal(state.params, expected.params)
    assert [log.test_accuracy for log in logs] == [
        log.test_accuracy for log in expected_logs
    ]
    assert logs[-1].step == 12 and logs[-1].test_accuracy > 0.3  # chance: 0.1


def test_fit_resumes_from_a_given_state_and_epoch():
    run = setup(SMALL, train_data=TRAIN, test_data=TEST)
    states = []
    whole, _, _ = fit(run, on_epoch=lambda state, log: states.append(state))
    resumed, logs, _ = fit(run._replace(state=states[0]), start_epoch=1)
    assert [log.epoch for log in logs] == [2]
    assert _trees_equal(resumed.params, whole.params)


def test_fit_trains_dp_sgd_when_configured():
    config = dataclasses.replace(SMALL, dp_clip=1e-6, epochs=1)
    clipped, _, _ = fit(setup(config, train_data=TRAIN, test_data=TEST))
    plain_config = dataclasses.replace(config, dp_clip=None)
    plain, _, _ = fit(setup(plain_config, train_data=TRAIN, test_data=TEST))
    assert not _trees_equal(clipped.params, plain.params)


# --- the "From Python" snippet of docs/training.md and the CLI agree
def _readme_snippet() -> str:
    """The Python block after "From Python" in docs/training.md."""
    after = TRAINING_PAGE.read_text().split("From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", after, flags=re.DOTALL)[1]


def test_readme_snippet_and_cli_give_the_same_accuracy(tmp_path, monkeypatch):
    # The snippet runs as written, on a small stand-in for Fashion-MNIST found
    # through $JAXBP_DATA_DIR; `jaxbp train` with no flags then finds the same files.
    folder = tmp_path / "data" / "fashion-mnist"
    _write_dataset(folder)
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    monkeypatch.setattr(jaxbp.data, "load_dataset", _load_any_size)
    snippet = _readme_snippet()
    assert "jaxbp.config.setup(config)" in snippet
    namespace: dict = {}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(snippet, str(TRAINING_PAGE), "exec"), namespace)
    logs = namespace["logs"]
    config = namespace["config"]
    assert len(logs) == config.epochs == 10
    assert stdout.getvalue().startswith("final test accuracy ")

    out = tmp_path / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(["train", "--out", str(out), "--quiet", "--devices", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert TrainConfig.from_dict(metrics["config"]) == config
    assert metrics["final_test_accuracy"] == logs[-1].test_accuracy
    assert [h["test_loss"] for h in metrics["history"]] == [
        log.test_loss for log in logs
    ]
    _, params, _ = jaxbp.load_checkpoint(out / "checkpoint.npz")
    assert _trees_equal(params, namespace["state"].params)
    assert math.isfinite(metrics["final_test_accuracy"])
