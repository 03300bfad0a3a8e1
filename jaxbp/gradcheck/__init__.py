"""Check a hand-derived gradient of any function of any pytree, leaf by leaf.

:func:`check_grad` compares the user's ``grad_fun(params, *args)`` with
``jax.grad(fun)`` entry by entry, and both with central finite differences that know
their own error budget; :func:`check_network_grad` is the same check, with the same
options (:class:`CheckOptions`), of a network spec's loss (an :class:`~jaxbp.MLP` or a
:class:`~jaxbp.Sequential`), which also names the first wrong layer. Every comparison
is a table with one row per leaf, named by its key path. ``check_gradients`` and
``assert_gradients_agree`` are deprecated names of the network check, kept for one
release. Constants the checkers use (``GRAD_RTOL``, ``FD_SAFETY``, the report's
names) are reachable by their module path.

The modules, each importing only those above it (and :mod:`jaxbp.finite_differences`):

* :mod:`jaxbp.gradcheck.inputs`: the checks of what the user passes, made before any
  comparison (finite floating-point leaves, a real scalar ``fun``, with ``has_aux``
  or not, a ``grad_fun`` result shaped like ``params``, dtypes, every option in its
  range), with errors that name the leaf or the option;
* :mod:`jaxbp.gradcheck.report`: :class:`GradCheckReport`, :class:`Comparison` and
  :class:`LeafError`, their tables, and the rule of gradient against gradient
  (:func:`compare_grads`, :func:`default_tiny`, :data:`GRAD_RTOL`);
* :mod:`jaxbp.gradcheck.check`: :func:`check_grad` and :func:`assert_grad_matches`,
  their options :class:`CheckOptions`,
  the rule of gradient against finite differences (error budgets, kinks, and
  directions that mix pairs of kinked coordinates), and
  :func:`finite_difference_grad`, plain central differences;
* :mod:`jaxbp.gradcheck.network`: :func:`check_network_grad` and
  :func:`assert_network_grad_matches`, with per-layer localisation of the delta rule.

Use it in a test suite as a one-liner::

    jaxbp.assert_grad_matches(fun, grad_fun, params, x, y)
"""

from jaxbp.gradcheck.check import CheckOptions as CheckOptions
from jaxbp.gradcheck.check import assert_grad_matches as assert_grad_matches
from jaxbp.gradcheck.check import check_grad as check_grad
from jaxbp.gradcheck.check import finite_difference_grad as finite_difference_grad
from jaxbp.gradcheck.network import assert_gradients_agree as assert_gradients_agree
from jaxbp.gradcheck.network import (
    assert_network_grad_matches as assert_network_grad_matches,
)
from jaxbp.gradcheck.network import check_gradients as check_gradients
from jaxbp.gradcheck.network import check_network_grad as check_network_grad
from jaxbp.gradcheck.report import Comparison as Comparison
from jaxbp.gradcheck.report import GradCheckReport as GradCheckReport
from jaxbp.gradcheck.report import LeafError as LeafError
from jaxbp.gradcheck.report import compare_grads as compare_grads

__all__ = (
    "CheckOptions",
    "Comparison",
    "GradCheckReport",
    "LeafError",
    "assert_grad_matches",
    "assert_gradients_agree",
    "assert_network_grad_matches",
    "check_grad",
    "check_gradients",
    "check_network_grad",
    "compare_grads",
    "finite_difference_grad",
)
