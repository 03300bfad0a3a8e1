"""The layer bug catalogue: each classic conv, pooling and BatchNorm backward mistake
fails ``check_network_grad`` and is named by its layer; the correct rules and the one
harmless mistake pass.

The buggy layers live in ``experiments/layer_bug_catalogue.py`` (one source for the
experiment and these tests); here every case runs in float64, and two in float32.
"""

import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import layer_bug_catalogue as lbc  # noqa: E402

CASES = [(bug, "float64") for bug in lbc.BUGS] + [
    ("conv_padding_offset", "float32"),
    ("batchnorm_no_variance_path", "float32"),
]


@pytest.mark.parametrize(("bug", "dtype"), CASES)
def test_each_bug_is_caught_and_named(bug, dtype):
    row = lbc.run_case(bug, dtype)
    _, _, index, expected = lbc.BUGS[bug]
    if expected == "pass":
        assert not row["caught"], row["note"]
    else:
        assert row["caught"], f"{bug} passed in {dtype}"
        assert row["named_layer"] == index, row["note"]
    assert row["correct"]
