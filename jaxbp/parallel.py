"""Meshes and shardings: data-parallel training on many devices and many hosts.

Data parallelism splits each batch across the devices of a one-axis mesh (axis
``"data"``) and keeps a full copy of the parameters and optimizer state on every
device. Because every objective in jaxbp is the *mean* over the batch and every device
holds the same number ``B / n`` of examples, the batch gradient is the mean of the
per-device gradients:

.. math::

   L = \\frac{1}{B} \\sum_{i=1}^{B} l_i
     = \\frac{1}{n} \\sum_{d=1}^{n} \\underbrace{\\frac{n}{B}
       \\sum_{i \\in \\text{shard}_d} l_i}_{L_d},
   \\qquad
   \\nabla L = \\frac{1}{n} \\sum_{d=1}^{n} \\nabla L_d .

:func:`data_parallel` writes exactly this down with ``jax.shard_map``: each device
runs the ordinary single-device ``value_and_grad`` (the hand-derived delta rule or
``jax.grad``) on its shard, and one ``jax.lax.pmean`` over ``"data"`` averages the
losses and gradients. We use ``shard_map`` rather than letting the SPMD partitioner
split a ``jit`` program (``NamedSharding`` inputs plus sharding constraints) because

* the local computation is the unchanged single-device code: the manual rule's
  contraction ``dL/dW = a_prev^T delta`` runs over the local batch, so
  :mod:`jaxbp.backward` needs no output-sharding annotations (which explicit mesh
  axes, the default of ``jax.make_mesh``, demand for a contraction over a sharded
  axis);
* the one collective per step is visible in the code rather than inferred; and
* it works the same for meshes with ``Explicit`` and ``Auto`` axes and for meshes that
  span many processes.

Averaging happens exactly once. Inside ``shard_map`` the replicated parameters are
cast to device-varying values (``jax.lax.pcast(..., to="varying")``) before the local
gradient is taken: differentiating a local loss with respect to *unvarying* parameters
would make ``jax.grad`` sum the gradients over devices by itself (the transpose of the
implicit broadcast is a ``psum``), and a further ``pmean`` would then be wrong by a
factor of ``n``. With the cast, manual and autodiff gradients are both purely local and
the explicit ``pmean`` is the only reduction.

Everything a mesh changes in training is here, as functions that take the mesh or
``None`` (one device) and then change nothing: :func:`replicate` (the state and the
datasets), :func:`take_rows` (each device's rows of a batch), :func:`data_parallel`
(the gradient), :func:`whole_batch` (the batch for an optimizer that reads it),
:func:`data_parallel_sum` and :func:`round_up_batch_size` (the evaluation), and
:func:`check_batch_size`. :mod:`jaxbp.train` calls them alike with a mesh or without.

Many hosts use JAX's own multi-controller runtime: every process calls
:func:`initialize_distributed` (``jax.distributed.initialize``), builds the same mesh
over all global devices, and feeds only its own slice of each global batch, which
:func:`global_batch` assembles into one global array with
``jax.make_array_from_process_local_data``. The compiled step is the same program on
every process and its ``pmean`` runs over all devices of all processes.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: The name of the mesh axis the batch is split along.
DATA_AXIS = "data"


def make_data_mesh(
    num_devices: int | None = None, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A one-axis mesh ``("data",)`` for data parallelism.

    Args:
      num_devices: how many devices to use; ``None`` for all of them. On one host the
        first ``num_devices`` devices are taken; with many processes it must be all
        global devices (``jax.device_count()``).
      devices: the devices to use instead (overrides ``num_devices``).

    Returns:
      A ``jax.sharding.Mesh`` with the single axis :data:`DATA_AXIS` (``Explicit``
      axis type, the ``jax.make_mesh`` default).

    Raises:
      ValueError: if ``num_devices`` is not positive or more than there are.

    Examples:
      >>> mesh = make_data_mesh(1)
      >>> dict(mesh.shape)
      {'data': 1}
    """
    if devices is None:
        available = jax.devices()
        if num_devices is None:
            num_devices = len(available)
        if num_devices <= 0:
            raise ValueError(f"num_devices must be positive, got {num_devices}")
        if num_devices > len(available):
            raise ValueError(
                f"asked for {num_devices} devices but only {len(available)} are "
                f"available ({available[0].platform}); on CPU, simulate more with "
                "JAX_NUM_CPU_DEVICES=N or jax.config.update('jax_num_cpu_devices', N) "
                "before JAX starts"
            )
        if jax.process_count() > 1 and num_devices != len(available):
            raise ValueError(
                f"with {jax.process_count()} processes the mesh must span all "
                f"{len(available)} global devices, got num_devices={num_devices}"
            )
        devices = available[:num_devices]
    devices = list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def num_data_shards(mesh: Mesh) -> int:
    """The number of devices the batch is split over (the size of ``"data"``).

    Raises:
      ValueError: if ``mesh`` has no ``"data"`` axis.
    """
    if DATA_AXIS not in mesh.shape:
        raise ValueError(
            f"the mesh needs an axis named {DATA_AXIS!r} to split the batch along, "
            f"got axes {tuple(mesh.axis_names)}"
        )
    return int(mesh.shape[DATA_AXIS])


def check_batch_size(batch_size: int, mesh: Mesh | None) -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over the mesh.

    Args:
      batch_size: examples per step.
      mesh: the data mesh; ``None`` (one device) takes any size.

    Raises:
      ValueError: if ``batch_size`` is not a multiple of the device count.
    """
    if mesh is None:
        return
    n = num_data_shards(mesh)
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the "
            f"mesh; use a multiple of {n}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value copied whole onto every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch split along its leading axis over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def round_up_batch_size(batch_size: int, mesh: Mesh | None) -> int:
    """The least multiple of the mesh's device count that is at least
    ``batch_size`` (``batch_size`` itself without a mesh).

    For evaluation, whose batch size is memory, not results (the padding is masked
    out), so it may grow to split evenly.

    Examples:
      >>> round_up_batch_size(1000, None)
      1000
    """
    if mesh is None:
        return batch_size
    n = num_data_shards(mesh)
    return -(-batch_size // n) * n


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Copies every leaf of ``tree`` whole onto every device of ``mesh``.

    For parameters, optimizer state (a whole ``TrainState``) and device-resident
    datasets. Every process must pass the same values (``jax.device_put`` accepts
    host and single-device values for a sharding that spans many processes); PRNG
    key arrays are placed through their key data.

    Args:
      tree: a pytree of arrays (``None`` leaves stay ``None``).
      mesh: the data mesh; ``None`` (one device) returns ``tree`` unchanged.

    Returns:
      The same pytree, every leaf replicated on ``mesh``.
    """
    if mesh is None:
        return tree
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            data = jax.device_put(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles each process's rows into one global batch split over ``"data"``.

    Each process passes the rows its devices hold (the process's contiguous slice of
    the global batch, in process order); the result is a global ``jax.Array`` of
    shape ``(sum of local rows, ...)`` sharded over all devices of the mesh. With a
    single process this simply splits the batch over the local devices.

    Args:
      local_batch: a pytree of host arrays, leading axis the process-local rows.
      mesh: the data mesh.

    Returns:
      The same pytree of global arrays.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
        local_batch,
    )


def constrain(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """Inside ``jit``: gives ``x`` the sharding ``sharding``.

    ``jax.reshard`` for meshes with ``Explicit`` axes (where the sharding is part of
    the type), ``jax.lax.with_sharding_constraint`` for ``Auto`` axes.
    """
    if all(t == AxisType.Explicit for t in sharding.mesh.axis_types):
        return jax.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def take_rows(data: Any, idx: jax.Array, mesh: Mesh | None) -> Any:
    """Inside ``jit``: ``data[idx]`` for a replicated dataset, split over ``"data"``.

    Each device gathers only its own ``len(idx) / n`` rows from its copy of the
    dataset (no device gathers the whole batch, no communication).

    Args:
      data: a pytree of arrays replicated on ``mesh``, leading axis the examples.
      idx: integer indices ``(B,)``; ``B`` divisible by the size of ``"data"``.
      mesh: the data mesh; ``None``: every leaf's ``a[idx]`` on one device.

    Returns:
      The pytree of batches ``(B, ...)``, sharded along ``"data"``.
    """
    if mesh is None:
        return jax.tree.map(lambda a: a[idx], data)
    idx = constrain(idx, batch_sharding(mesh))
    return jax.shard_map(
        lambda data, idx: jax.tree.map(lambda a: a[idx], data),
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=P(DATA_AXIS),
    )(data, idx)


def whole_batch(batch: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: every leaf of ``batch`` whole on every device of ``mesh``.

    For an optimizer that reads the batch (K-FAC's Kronecker factors are sums over
    its examples): it sees the same batch as on one device. An optimizer that does
    not read it leaves it unused, and XLA drops the copy.

    Args:
      batch: a pytree of arrays, e.g. ``(x, y)`` split over ``"data"``.
      mesh: the data mesh; ``None`` returns ``batch`` unchanged.

    Returns:
      The same pytree, every leaf replicated.
    """
    if mesh is None:
        return batch
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: constrain(a, sharding), batch)


def data_parallel(
    value_and_grad: Callable,
    mesh: Mesh | None,
    *,
    batch_specs: Sequence[P] | None = None,
) -> Callable:
    """Data-parallel ``(params, *batch) -> (loss, grads)`` from a single-device one.

    Each device calls ``value_and_grad(params, *local_batch)`` on its shard, which
    must return the *mean* loss over that shard and its gradient; the result is
    ``pmean`` over ``"data"``, the loss and gradient of the whole batch (see the
    module docstring for why this is exactly the single-device gradient and why it
    is averaged only once).

    Args:
      value_and_grad: ``(params, *batch) -> (loss, grads)`` for one device, e.g.
        ``net.value_and_manual_grad`` or ``jax.value_and_grad(net.loss)``.
      mesh: the data mesh; ``None`` (one device) returns ``value_and_grad``
        itself.
      batch_specs: a ``PartitionSpec`` per batch argument; default
        ``(P("data"), P("data"))`` for ``(x, y)`` split along the batch axis.

    Returns:
      A function to call inside ``jax.jit`` with ``params`` replicated on ``mesh``;
      each batch argument is first given the sharding its spec names (a no-op for a
      batch that already has it, such as one from :func:`global_batch`).

    Raises:
      ValueError: if ``mesh`` has no ``"data"`` axis.
    """
    if mesh is None:
        return value_and_grad
    num_data_shards(mesh)
    if batch_specs is None:
        batch_specs = (P(DATA_AXIS), P(DATA_AXIS))

    def local(params, *batch):
        # This device's copy of the parameters: differentiating with respect to it
        # gives the local gradient, not one that jax.grad has already summed.
        params = jax.lax.pcast(params, DATA_AXIS, to="varying")
        loss, grads = value_and_grad(params, *batch)
        # L = mean_d L_d  =>  dL/dtheta = mean_d dL_d/dtheta
        return jax.lax.pmean((loss, grads), DATA_AXIS)

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), *batch_specs), out_specs=(P(), P())
    )

    def value_and_grad_data_parallel(params, *batch):
        batch = [
            constrain(a, NamedSharding(mesh, spec))
            for a, spec in zip(batch, batch_specs, strict=True)
        ]
        return sharded(params, *batch)

    return value_and_grad_data_parallel


def data_parallel_sum(totals: Callable, mesh: Mesh | None) -> Callable:
    """Data-parallel ``(init, replicated, batches) -> totals`` from a one-device one.

    ``totals(init, replicated, batches)`` adds up something over a stack of batches
    (each leaf of ``batches`` ``(num_batches, batch_size, ...)``), starting from
    ``init``: an evaluation's loss and correct-answer counts, say. On a mesh each
    device runs it on its own columns of every batch (``batch_size / n`` examples
    each) and one ``jax.lax.psum`` over ``"data"`` adds the devices' totals:

    .. math::

       \\sum_{i=1}^{N} s_i = \\sum_{d=1}^{n} \\sum_{i \\in \\text{shard}_d} s_i .

    Inside ``shard_map`` ``init`` is cast to a device-varying value
    (``jax.lax.pcast(..., to="varying")``), because each device's running totals
    differ.

    Args:
      totals: ``(init, replicated, batches) -> totals`` on one device.
      mesh: the data mesh; ``None`` returns ``totals`` itself.

    Returns:
      A function to call inside ``jax.jit`` with ``replicated`` (parameters, say)
      replicated on ``mesh`` and ``batch_size`` divisible by its device count
      (:func:`round_up_batch_size`).

    Raises:
      ValueError: if ``mesh`` has no ``"data"`` axis.
    """
    if mesh is None:
        return totals
    num_data_shards(mesh)
    columns = P(None, DATA_AXIS)  # (num_batches, batch_size, ...): split each batch

    def local(init, replicated, batches):
        init = jax.lax.pcast(init, DATA_AXIS, to="varying")
        # sum_i s_i = sum_d (the sum over shard d)
        return jax.lax.psum(totals(init, replicated, batches), DATA_AXIS)

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), columns), out_specs=P()
    )

    def totals_data_parallel(init, replicated, batches):
        sharding = NamedSharding(mesh, columns)
        batches = jax.tree.map(lambda a: constrain(a, sharding), batches)
        return sharded(init, replicated, batches)

    return totals_data_parallel


def initialize_distributed(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Joins this process to a multi-process JAX job (``jax.distributed.initialize``).

    Call it in every process before any other JAX call; afterwards ``jax.devices()``
    lists the devices of all processes and :func:`make_data_mesh` spans them. On CPU,
    JAX's cross-process collectives use gloo (``jax_cpu_collectives_implementation``,
    the default in current JAX).

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable from every
        process (e.g. ``"10.0.0.1:1234"``, or ``"127.0.0.1:1234"`` on one machine).
      num_processes: the number of processes in the job.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
