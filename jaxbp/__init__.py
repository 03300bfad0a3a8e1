"""jaxbp: backpropagation in JAX, a hand-derived backward pass beside jax.grad.

The public API, re-exported from the modules that hold it:

* :class:`MLP` (``jaxbp.mlp``): the network spec with ``init``, ``forward``, ``loss``
  and ``manual_grad``;
* ``jaxbp.activations`` and ``jaxbp.losses``: each function with its hand-derived
  derivative;
* ``jaxbp.backward``: the delta rule on a forward cache;
* ``jaxbp.gradcheck``: manual vs ``jax.grad`` vs finite differences, leaf by leaf;
* ``jaxbp.data``: MNIST and Fashion-MNIST from IDX files.
"""

from jaxbp.activations import ACTIVATIONS
from jaxbp.activations import Activation
from jaxbp.activations import get_activation
from jaxbp.data import load_dataset
from jaxbp.data import load_xy
from jaxbp.data import one_hot
from jaxbp.data import to_float
from jaxbp.gradcheck import GradCheckReport
from jaxbp.gradcheck import assert_gradcheck
from jaxbp.gradcheck import compare_grads
from jaxbp.gradcheck import finite_difference_grad
from jaxbp.gradcheck import gradcheck
from jaxbp.losses import LOSSES
from jaxbp.losses import Loss
from jaxbp.losses import get_loss
from jaxbp.mlp import MLP

__version__ = "0.1.0"

__all__ = (
    "ACTIVATIONS",
    "Activation",
    "GradCheckReport",
    "LOSSES",
    "Loss",
    "MLP",
    "assert_gradcheck",
    "compare_grads",
    "finite_difference_grad",
    "get_activation",
    "get_loss",
    "gradcheck",
    "load_dataset",
    "load_xy",
    "one_hot",
    "to_float",
)
