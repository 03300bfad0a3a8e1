"""The bug catalogue: each classic backward-pass mistake fails the check, named.

The buggy ``grad_fun``s live in ``experiments/bug_catalogue.py`` (one source for the
experiment and these tests): a 6-5-5-3 tanh MLP checked with
``jaxbp.check_network_grad(..., grad_fun=...)`` and a LayerNorm classifier over a dict
of parameters checked with ``jaxbp.check_grad``, each in float32 and float64.
"""

import json
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import bug_catalogue as bc  # noqa: E402

BUGGY = [b for b in bc.BUGS if b != "none"]


@pytest.mark.parametrize("dtype", bc.DTYPES)
@pytest.mark.parametrize("model", ["mlp", "layernorm"])
def test_correct_grad_fun_passes(model, dtype):
    row = bc.run_case(model, "none", dtype)
    assert not row["caught"], row["message"]
    assert row["named"] == [] and row["correct"]


@pytest.mark.parametrize("dtype", bc.DTYPES)
@pytest.mark.parametrize("bug", BUGGY)
def test_mlp_bug_fails_and_names_the_layer(bug, dtype):
    row = bc.run_case("mlp", bug, dtype)
    assert row["caught"], f"{bug} passed in {dtype}"
    first = max(bc.MLP_BROKEN_LAYERS[bug])
    assert row["layer"] == first
    assert f"layer {first} of 3" in row["message"]
    if row["how"] == "report":
        assert set(row["named"]) == set(row["expected_leaves"])
    else:  # the wrong shapes are named, the first from the output among them
        assert f"[{first - 1}]" in row["message"]
        assert set(row["named"]) <= set(row["expected_leaves"])
    assert row["correct"]


@pytest.mark.parametrize("dtype", bc.DTYPES)
@pytest.mark.parametrize("bug", BUGGY)
def test_layernorm_bug_fails_and_names_the_leaves(bug, dtype):
    row = bc.run_case("layernorm", bug, dtype)
    assert row["caught"], f"{bug} passed in {dtype}"
    expected = bc.LN_BROKEN_LEAVES[bug]
    if row["how"] == "report":
        assert set(row["named"]) == expected
        for path in expected:
            assert path in row["message"]
    else:
        assert set(row["named"]) == expected
    assert row["correct"]


def test_quick_run_writes_results(tmp_path):
    assert bc.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bug_catalogue.json").read_text())
    assert record["quick"] is True
    assert record["as_expected"] == record["cases"] == 2 * len(bc.QUICK_BUGS)
    table = (tmp_path / "bug_catalogue.md").read_text()
    assert table.startswith("| bug | mlp float32 | layernorm float32 |")
    assert "1/B of the mean missing" in table
