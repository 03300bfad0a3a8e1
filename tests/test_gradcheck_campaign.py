"""The adversarial campaign against the gradient checker, a fixed-seed few in CI.

The strategies and properties live in ``experiments/gradcheck_campaign.py`` (one source
for the experiment, which runs many more cases, and these tests): random pytrees and
dtypes, smooth functions with hand-derived gradients, injected bugs, kinks with valid
and invalid subgradients, and every option and input at good and bad values. A case
whose property fails prints the report that shows why.
"""

import json
import pathlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import gradcheck_campaign as gc  # noqa: E402


def ci(max_examples: int):
    """Fixed examples (derandomize), few enough for about a minute on two cores."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@ci(14)
@given(gc.bug_cases())
def test_bugs_above_the_budget_fail_and_name_their_leaves(case):
    record = gc.bug_case_holds(case)
    assert record["ok"], record["why"]


@ci(10)
@given(gc.kink_cases())
def test_valid_subgradients_pass_and_invalid_ones_fail(case):
    record = gc.kink_case_holds(case)
    assert record["ok"], record["why"]


@ci(30)
@given(gc.option_cases())
def test_no_option_or_input_gives_a_traceback_or_an_empty_pass(case):
    record = gc.option_case_holds(case)
    assert record["ok"], record["why"]


def test_quick_run_writes_results(tmp_path):
    assert gc.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gradcheck_campaign.json").read_text())
    assert record["quick"] is True
    assert record["held"] == record["cases"] == sum(gc.QUICK.values()) + 4
    float64 = record["sweep"]["per_dtype"]["float64"]
    # float64's rtol is 1e-10: a bug below it is within the stated budget.
    assert float64["max_passed"] is None or float64["max_passed"] < 1e-10
    assert float64["min_caught"] < 2e-3
