"""Shared pytest configuration for jaxbp's tests."""

import os
import pathlib

# The suite runs in one worker process per core (pytest -n auto): on a GPU, none may
# take most of its memory up front, as JAX does by default.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest

# Silent rank promotion (adding a (B,) array to a (B, O) one) hides shape bugs in
# hand-written backward code: make it an error everywhere in the test suite.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The parent folder of real IDX files (``mnist/``, ``fashion-mnist/``).

    Read from ``JAXBP_DATA_DIR`` (``.ci/run`` points it at ``../shared/data``); tests
    that need real files are skipped with a reason when it is not set or not there.
    """
    value = os.environ.get("JAXBP_DATA_DIR")
    if not value:
        pytest.skip("JAXBP_DATA_DIR is not set: no real MNIST/Fashion-MNIST files")
    path = pathlib.Path(value)
    if not path.is_dir():
        pytest.skip(f"JAXBP_DATA_DIR={value} is not a directory")
    return path
