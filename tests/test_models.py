"""Model presets and spec strings: parsing, the canonical form, one-line errors."""

import re

import pytest

import jaxbp
from jaxbp import layers as L
from jaxbp import models
from jaxbp.models import SpecError

LENET = (
    L.Reshape((28, 28, 1)),
    L.Conv2D(20, 5),
    L.MaxPool2D(2),
    L.Conv2D(50, 5),
    L.MaxPool2D(2),
    L.Flatten(),
    L.Dense(500),
    L.Activation("relu"),
    L.Dense(10),
)


def test_lenet_is_caffes():
    assert models.parse(models.PRESETS["lenet"]) == LENET
    net = jaxbp.Sequential(models.parse(models.canonical("lenet")), input_shape=(784,))
    # Caffe's LeNet: 20*(25+1) + 50*(500+1) + 500*(800+1) + 10*(500+1)
    assert net.num_params == 431_080
    assert net.shapes[5] == (4, 4, 50)  # after the second pooling


@pytest.mark.parametrize("name", list(models.PRESETS))
def test_presets_are_canonical_and_build_on_flat_mnist(name):
    spec = models.PRESETS[name]
    assert models.canonical(name) == spec == models.to_spec(models.parse(spec))
    assert models.canonical(f" {name.upper()} ") == spec
    assert models.preset_name(spec) == name
    net = jaxbp.Sequential(models.parse(spec), input_shape=(784,))
    assert net.num_outputs == 10
    assert name in models.PRESET_DESCRIPTIONS


def test_bn_res_has_batchnorm_a_residual_block_and_dropout():
    kinds = {type(layer) for layer in models.parse(models.PRESETS["bn-res"])}
    assert {L.BatchNorm, L.Residual, L.Dropout, L.Conv2D} <= kinds


@pytest.mark.parametrize(
    ("spec", "layers", "canonical"),
    [
        ("Dense( 10 )", (L.Dense(10),), "dense(10)"),
        ("dense(10,init=glorot)", (L.Dense(10, "glorot"),), "dense(10,init=glorot)"),
        ("conv(32,3,SAME)", (L.Conv2D(32, 3, padding="SAME"),), "conv(32,3,same)"),
        ("conv2d(8,5x3,valid)", (L.Conv2D(8, (5, 3)),), "conv(8,5x3)"),
        (
            "conv(8,3,stride=2x1,padding=same)",
            (L.Conv2D(8, 3, stride=(2, 1), padding="SAME"),),
            "conv(8,3,same,stride=2x1)",
        ),
        (
            "conv(4,3,padding=0:1x2)",
            (L.Conv2D(4, 3, padding=((0, 1), (2, 2))),),
            "conv(4,3,padding=0:1x2)",
        ),
        ("conv(4,3,padding=1)", (L.Conv2D(4, 3, padding=((1, 1),) * 2),), None),
        ("maxpool(2)", (L.MaxPool2D(2),), None),
        ("maxpool(3,stride=2)", (L.MaxPool2D(3, stride=2),), None),
        ("avg_pool(2,same)", (L.AvgPool2D(2, padding="SAME"),), "avgpool(2,same)"),
        ("flatten()", (L.Flatten(),), "flatten"),
        ("reshape(28,28,1)", (L.Reshape((28, 28, 1)),), None),
        ("bn", (L.BatchNorm(),), None),
        (
            "BatchNorm(momentum=0.99,eps=1e-3)",
            (L.BatchNorm(0.99, 1e-3),),
            "bn(momentum=0.99,eps=0.001)",
        ),
        ("ln(eps=0.001)", (L.LayerNorm(1e-3),), "ln(eps=0.001)"),
        ("dropout(0.5)", (L.Dropout(0.5),), None),
        ("dropout(rate=.25)", (L.Dropout(0.25),), "dropout(0.25)"),
        ("leaky_relu,GELU", (L.Activation("leaky_relu"), L.Activation("gelu")), None),
        (
            "res(conv(4,3,same),bn,relu),res(dense(4))",
            (
                L.Residual(
                    (
                        L.Conv2D(4, 3, padding="SAME"),
                        L.BatchNorm(),
                        L.Activation("relu"),
                    )
                ),
                L.Residual(L.Dense(4)),
            ),
            None,
        ),
        ("res(res(tanh))", (L.Residual(L.Residual(L.Activation("tanh"))),), None),
    ],
)
def test_parse_and_canonical_form(spec, layers, canonical):
    assert models.parse(spec) == layers
    written = models.to_spec(layers)
    assert written == (canonical or spec.lower())
    assert models.parse(written) == layers  # the round trip
    assert models.canonical(spec) == written


@pytest.mark.parametrize(
    ("spec", "names", "says"),
    [
        ("dense(10),foo,relu", "at 'foo' (character 11)", "unknown layer"),
        ("lenet,dense(10)", "at 'lenet' (character 1)", "is a whole model"),
        ("conv(20)", "at 'conv'", "conv takes 2 to 3 positional arguments, got 1"),
        ("dense(10", "at the end", "expected ',' or ')'"),
        ("dense(10) relu", "at 'relu'", "expected ',' between layers"),
        ("dense(10),,relu", "at ',' (character 11)", "expected a layer"),
        ("dense(x)", "at 'dense'", "'x' is not a non-negative integer"),
        ("dense(n=3)", "at 'dense'", "unknown argument 'n'"),
        ("dropout", "at 'dropout'", "dropout needs its rate"),
        ("dropout(1.5)", "at 'dropout'", "Dropout rate must be a probability"),
        ("conv(3,3,sideways)", "at 'conv'", "'sideways' is not a padding"),
        ("maxpool(2,stride=2,3)", "at '3'", "a positional argument after a keyword"),
        ("res", "at 'res'", "res needs its block"),
        ("res(dense(3)", "at the end", "expected ',' or ')'"),
        ("", "", "is empty"),
    ],
)
def test_errors_name_the_token_and_what_is_valid(spec, names, says):
    with pytest.raises(SpecError) as info:
        models.parse(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"spec {spec!r}")
    assert names in message and says in message
    if "unknown layer" in says or "is empty" in says:
        # Every kind of layer and every activation is listed.
        for form in ("dense(N", "conv(F,K", "maxpool(W", "res(LAYER", "relu", "gelu"):
            assert form in message
    assert isinstance(info.value, ValueError)


def test_canonical_rejects_what_is_neither_preset_nor_spec():
    with pytest.raises(SpecError, match=re.escape("at 'lenet5' (character 1)")):
        models.canonical("lenet5")
    with pytest.raises(SpecError, match="a spec is a string"):
        models.parse(3)


def test_to_spec_rejects_a_foreign_layer():
    class Square:
        def output_shape(self, s):
            return s

    with pytest.raises(ValueError, match="has no spec form"):
        models.to_spec([L.Dense(3), Square()])
