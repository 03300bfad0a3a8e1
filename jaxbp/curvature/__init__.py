"""Second order by hand: curvature products, diagonals and Kronecker factors.

Each quantity is derived layer by layer and written out, with no autodiff, and checked
against ``jax`` in the tests:

* :mod:`jaxbp.curvature.network`: an ``MLP`` or ``Sequential`` network as a chain of
  layers, and the layers refused (LayerNorm, BatchNorm, Dropout);
* :mod:`jaxbp.curvature.rop`: Pearlmutter's R-operator of every layer, the forward
  and backward R-passes;
* :mod:`jaxbp.curvature.products`: :func:`hvp` and :func:`ggn_vp`;
* :mod:`jaxbp.curvature.diag`: :func:`diag_ggn` (exact), :func:`diag_ggn_mc`
  (Monte Carlo) and :func:`diag_hessian` (MLPs);
* :mod:`jaxbp.curvature.kfac`: :func:`kfac_factors`, the Kronecker factors of
  every Dense (KFLR, Monte-Carlo KFAC) and Conv2D layer (KFC);
* :mod:`jaxbp.curvature.kfac_optim`: :func:`scale_by_kfac`, a damped K-FAC
  preconditioner as an optax transformation that takes the batch;
* :mod:`jaxbp.curvature.check`: :func:`check_hvp` and :func:`assert_hvp_matches`,
  any Hessian-vector product against autodiff and finite differences of
  ``jax.grad``, leaf by leaf.
"""

from jaxbp.curvature.check import assert_hvp_matches as assert_hvp_matches
from jaxbp.curvature.check import check_hvp as check_hvp
from jaxbp.curvature.diag import diag_ggn as diag_ggn
from jaxbp.curvature.diag import diag_ggn_mc as diag_ggn_mc
from jaxbp.curvature.diag import diag_hessian as diag_hessian
from jaxbp.curvature.kfac import kfac_factors as kfac_factors
from jaxbp.curvature.kfac_optim import ScaleByKFACState as ScaleByKFACState
from jaxbp.curvature.kfac_optim import scale_by_kfac as scale_by_kfac
from jaxbp.curvature.products import ggn_vp as ggn_vp
from jaxbp.curvature.products import hvp as hvp

__all__ = (
    "ScaleByKFACState",
    "assert_hvp_matches",
    "check_hvp",
    "diag_ggn",
    "diag_ggn_mc",
    "diag_hessian",
    "ggn_vp",
    "hvp",
    "kfac_factors",
    "scale_by_kfac",
)
