"""Check a hand-derived gradient of any function of any pytree, leaf by leaf.

:func:`check_grad` compares the user's ``grad_fun(params, *args)`` with
``jax.grad(fun)`` entry by entry, and both with central finite differences that know
their own error budget; :func:`check_gradients` is the same check for a
:class:`~jaxbp.MLP`'s loss, which also names the first wrong layer. Every comparison is
a table with one row per leaf, named by its key path.

The modules, each importing only those above it (and :mod:`jaxbp.finite_differences`):

* :mod:`jaxbp.gradcheck.inputs`: the checks of what the user passes, made before any
  comparison (finite floating-point leaves, a real scalar ``fun``, with ``has_aux``
  or not, a ``grad_fun`` result shaped like ``params``, dtypes, every option in its
  range), with errors that name the leaf or the option;
* :mod:`jaxbp.gradcheck.report`: :class:`GradCheckReport`, :class:`Comparison` and
  :class:`LeafError`, their tables, and the rule of gradient against gradient
  (:func:`compare_grads`, :func:`default_tiny`, :data:`GRAD_RTOL`);
* :mod:`jaxbp.gradcheck.check`: :func:`check_grad` and :func:`assert_grad_matches`,
  the rule of gradient against finite differences (error budgets, kinks, and
  directions that mix pairs of kinked coordinates), and
  :func:`finite_difference_grad`, plain central differences;
* :mod:`jaxbp.gradcheck.mlp`: :func:`check_gradients` and
  :func:`assert_gradients_agree`, with per-layer localisation of the delta rule.

Use it in a test suite as a one-liner::

    jaxbp.assert_grad_matches(fun, grad_fun, params, x, y)
"""

from jaxbp.gradcheck.check import AUTO_ALL_LIMIT as AUTO_ALL_LIMIT
from jaxbp.gradcheck.check import FAR_BEYOND as FAR_BEYOND
from jaxbp.gradcheck.check import FD_MODES as FD_MODES
from jaxbp.gradcheck.check import FD_SAFETY as FD_SAFETY
from jaxbp.gradcheck.check import assert_grad_matches as assert_grad_matches
from jaxbp.gradcheck.check import check_grad as check_grad
from jaxbp.gradcheck.check import finite_difference_grad as finite_difference_grad
from jaxbp.gradcheck.mlp import MANUAL_NAME as MANUAL_NAME
from jaxbp.gradcheck.mlp import MLP_AUTO_ALL_LIMIT as MLP_AUTO_ALL_LIMIT
from jaxbp.gradcheck.mlp import assert_gradients_agree as assert_gradients_agree
from jaxbp.gradcheck.mlp import check_gradients as check_gradients
from jaxbp.gradcheck.report import AUTO_NAME as AUTO_NAME
from jaxbp.gradcheck.report import FD_NAME as FD_NAME
from jaxbp.gradcheck.report import GRAD_RTOL as GRAD_RTOL
from jaxbp.gradcheck.report import Comparison as Comparison
from jaxbp.gradcheck.report import GradCheckReport as GradCheckReport
from jaxbp.gradcheck.report import LeafError as LeafError
from jaxbp.gradcheck.report import compare_grads as compare_grads
from jaxbp.gradcheck.report import default_tiny as default_tiny

__all__ = (
    "AUTO_ALL_LIMIT",
    "AUTO_NAME",
    "Comparison",
    "FAR_BEYOND",
    "FD_MODES",
    "FD_NAME",
    "FD_SAFETY",
    "GRAD_RTOL",
    "GradCheckReport",
    "LeafError",
    "MANUAL_NAME",
    "MLP_AUTO_ALL_LIMIT",
    "assert_grad_matches",
    "assert_gradients_agree",
    "check_grad",
    "check_gradients",
    "compare_grads",
    "default_tiny",
    "finite_difference_grad",
)
