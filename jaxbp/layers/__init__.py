"""Layers, each a frozen spec with a pure forward and a hand-derived backward.

See :mod:`jaxbp.layers.base` for the protocol every layer follows and the chain rule
that composes them (:func:`chain_forward`, :func:`chain_backward`).
"""

from jaxbp.layers.base import Layer
from jaxbp.layers.base import LayerShapeError
from jaxbp.layers.base import chain_backward
from jaxbp.layers.base import chain_forward
from jaxbp.layers.base import chain_output_shapes
from jaxbp.layers.conv import Conv2D
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.elementwise import Activation
from jaxbp.layers.elementwise import Flatten
from jaxbp.layers.elementwise import Reshape
from jaxbp.layers.norm import BatchNorm
from jaxbp.layers.norm import LayerNorm
from jaxbp.layers.norm import batchnorm_backward_stepwise
from jaxbp.layers.pool import AvgPool2D
from jaxbp.layers.pool import MaxPool2D
from jaxbp.layers.residual import Residual

__all__ = (
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "LayerNorm",
    "LayerShapeError",
    "MaxPool2D",
    "Reshape",
    "Residual",
    "batchnorm_backward_stepwise",
    "chain_backward",
    "chain_forward",
    "chain_output_shapes",
)
