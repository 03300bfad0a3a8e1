"""jaxbp: backpropagation in JAX, a hand-derived backward pass beside jax.grad.

The public API, re-exported from the modules that hold it (data flows one way: data ->
model -> gradients -> train -> CLI):

* ``jaxbp.data``: MNIST and Fashion-MNIST from IDX files (local, cache, download);
* ``jaxbp.activations`` and ``jaxbp.losses``: each function with its hand-derived
  derivative;
* ``jaxbp.backward``: the delta rule on a forward cache;
* ``jaxbp.layers``: Dense, Activation, Conv2D, pooling, normalisation, Dropout,
  Residual and reshaping layers, each with a pure forward and a hand-derived
  backward, and the chain rule that composes them;
* ``jaxbp.mlp``: :class:`MLP`, the network spec with ``init``, ``forward``, ``loss``
  and ``manual_grad``;
* ``jaxbp.sequential``: :class:`Sequential`, any chain of layers with the same
  methods as ``MLP`` (plus state and keys for BatchNorm and Dropout);
* ``jaxbp.models``: named networks (``lenet``) and the spec strings of layers that
  ``TrainConfig(model=...)`` and ``jaxbp train --model`` take;
* ``jaxbp.finite_differences``: difference quotients with their error budget and
  kink detection;
* ``jaxbp.gradcheck``: any hand-derived gradient of any pytree against ``jax.grad``
  and finite differences, leaf by leaf; a package of ``inputs`` (validation),
  ``report`` (the tables and ``compare_grads``), ``check`` (``check_grad``) and
  ``mlp`` (``check_network_grad`` for network specs, with per-layer localisation);
* ``jaxbp.curvature``: second order by hand: Hessian- and Gauss-Newton-vector
  products by the R-operator, the diagonals of the Gauss-Newton matrix and of the
  Hessian, Kronecker factors (KFLR, KFAC, KFC), and ``check_hvp``, a checker of
  Hessian-vector products;
* ``jaxbp.per_example``: per-example gradients, their norms, DP-SGD clipping, for an
  ``MLP`` or a ``Sequential``; ``jaxbp.per_example_layers``: each layer's per-example
  rule;
* ``jaxbp.feedback``: learning rules whose backward pass does not use ``W^T``
  (feedback alignment, direct feedback alignment, sign symmetry) and their alignment
  with the true gradient;
* ``jaxbp.parallel``: meshes and shardings for data-parallel training;
* ``jaxbp.validation``: the checks of parameters, inputs and batches ``MLP`` runs;
* ``jaxbp.optim``: optimizers and learning-rate schedules by name;
* ``jaxbp.explainer``: :func:`explain`, one training step of a small network with
  every number of the forward pass, the chain rule and the delta rule (shown as
  text, JSON or a web page by ``jaxbp.render``, which this package does not import);
* ``jaxbp.train`` and ``jaxbp.checkpoint``: training state, compiled step and epoch,
  evaluation, the loop over epochs ``train_epochs``, atomic checkpoints;
* ``jaxbp.config``: :class:`TrainConfig`, the one description of a run; ``setup``,
  which builds its network, optimizer, data and initial state, and :func:`fit`, which
  trains it;
* ``jaxbp.cli``: the ``jaxbp`` command, one module per subcommand (not imported
  here).
"""

from jaxbp import activations
from jaxbp import backward
from jaxbp import checkpoint
from jaxbp import config
from jaxbp import curvature
from jaxbp import data
from jaxbp import explainer
from jaxbp import feedback
from jaxbp import finite_differences
from jaxbp import gradcheck
from jaxbp import layers
from jaxbp import losses
from jaxbp import mlp
from jaxbp import models
from jaxbp import optim
from jaxbp import parallel
from jaxbp import per_example
from jaxbp import per_example_layers
from jaxbp import sequential
from jaxbp import train
from jaxbp import validation
from jaxbp.activations import ACTIVATIONS
from jaxbp.activations import Activation
from jaxbp.activations import get_activation
from jaxbp.checkpoint import load_checkpoint
from jaxbp.checkpoint import load_model_state
from jaxbp.checkpoint import load_params
from jaxbp.checkpoint import save_checkpoint
from jaxbp.config import TrainConfig
from jaxbp.config import TrainSetup
from jaxbp.config import fit
from jaxbp.curvature import assert_hvp_matches
from jaxbp.curvature import check_hvp
from jaxbp.curvature import diag_ggn
from jaxbp.curvature import diag_ggn_mc
from jaxbp.curvature import diag_hessian
from jaxbp.curvature import ggn_vp
from jaxbp.curvature import hvp
from jaxbp.curvature import kfac_factors
from jaxbp.data import load_dataset
from jaxbp.data import load_xy
from jaxbp.data import one_hot
from jaxbp.data import to_float
from jaxbp.explainer import Trace
from jaxbp.explainer import explain
from jaxbp.feedback import init_feedback
from jaxbp.feedback import value_and_feedback_grad
from jaxbp.gradcheck import CheckOptions
from jaxbp.gradcheck import Comparison
from jaxbp.gradcheck import GradCheckReport
from jaxbp.gradcheck import LeafError
from jaxbp.gradcheck import assert_grad_matches
from jaxbp.gradcheck import assert_gradients_agree
from jaxbp.gradcheck import assert_network_grad_matches
from jaxbp.gradcheck import check_grad
from jaxbp.gradcheck import check_gradients
from jaxbp.gradcheck import check_network_grad
from jaxbp.gradcheck import compare_grads
from jaxbp.gradcheck import finite_difference_grad
from jaxbp.losses import LOSSES
from jaxbp.losses import Loss
from jaxbp.losses import get_loss
from jaxbp.mlp import MLP
from jaxbp.sequential import Sequential
from jaxbp.optim import make_optimizer
from jaxbp.per_example import clipped_grad
from jaxbp.per_example import per_example_grad_norms
from jaxbp.per_example import per_example_grads
from jaxbp.train import DPConfig
from jaxbp.train import TrainState
from jaxbp.train import init_train_state
from jaxbp.train import make_evaluate
from jaxbp.train import make_train_epoch
from jaxbp.train import make_train_step
from jaxbp.train import train_epochs

__version__ = "0.1.0"

__all__ = (
    "ACTIVATIONS",
    "Activation",
    "CheckOptions",
    "Comparison",
    "DPConfig",
    "GradCheckReport",
    "LOSSES",
    "LeafError",
    "Loss",
    "MLP",
    "Sequential",
    "TrainConfig",
    "TrainSetup",
    "Trace",
    "TrainState",
    "activations",
    "assert_grad_matches",
    "assert_gradients_agree",
    "assert_hvp_matches",
    "assert_network_grad_matches",
    "backward",
    "check_grad",
    "check_gradients",
    "check_hvp",
    "check_network_grad",
    "checkpoint",
    "clipped_grad",
    "compare_grads",
    "config",
    "curvature",
    "data",
    "diag_ggn",
    "diag_ggn_mc",
    "diag_hessian",
    "explain",
    "explainer",
    "feedback",
    "finite_difference_grad",
    "finite_differences",
    "fit",
    "get_activation",
    "get_loss",
    "ggn_vp",
    "gradcheck",
    "hvp",
    "init_feedback",
    "init_train_state",
    "kfac_factors",
    "layers",
    "load_checkpoint",
    "load_dataset",
    "load_model_state",
    "load_params",
    "load_xy",
    "losses",
    "make_evaluate",
    "make_optimizer",
    "make_train_epoch",
    "make_train_step",
    "mlp",
    "models",
    "one_hot",
    "optim",
    "parallel",
    "per_example",
    "per_example_grad_norms",
    "per_example_grads",
    "per_example_layers",
    "save_checkpoint",
    "sequential",
    "to_float",
    "train",
    "train_epochs",
    "validation",
    "value_and_feedback_grad",
)
