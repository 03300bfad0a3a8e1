"""Training runs through the ``jaxbp train`` command line, shared by the accuracy
experiments (``mnist_accuracy``, ``learning_rules``, ``layer_accuracy``).

Each of those scripts plans a list of :class:`PlannedRun` (a network, a gradient, a
seed and the ``jaxbp train`` arguments), turns each run's ``metrics.json`` into its
own record, and leaves the running to :func:`train_runs` (all runs in one sitting) or
:func:`train_into_file` (a result file that several sittings add to).

Not part of the library: imported as a sibling module, like ``_common``.
"""

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import _common


class PlannedRun(NamedTuple):
    """One ``jaxbp train`` of an experiment.

    Attributes:
      network: the experiment's name for the network.
      grad: the gradient (``--grad``) or learning rule.
      seed: the run's seed.
      args: the ``jaxbp`` arguments, from ``train`` on, without ``--out``.
    """

    network: str
    grad: str
    seed: int
    args: list[str]

    @property
    def key(self) -> tuple[str, str, int]:
        """``(network, grad, seed)``: what a result file knows the run by."""
        return self.network, self.grad, self.seed

    @property
    def command(self) -> str:
        """The command as a user would type it: ``jaxbp train ...``."""
        return f"jaxbp {shlex.join(self.args)}"


#: ``record(run, metrics, wall_s)``: a script's record of one run from its
#: ``metrics.json`` and the wall time of the whole command.
MakeRecord = Callable[[PlannedRun, dict, float], dict]


def run_key(record: dict) -> tuple[str, str, int]:
    """``(network, grad, seed)`` of a run's record, as :attr:`PlannedRun.key`."""
    return record["network"], record["grad"], record["seed"]


def parse_seeds(
    parser: argparse.ArgumentParser, text: str | None, *, quick: bool
) -> list[int]:
    """``--seeds``: ``"0,1,2"`` -> ``[0, 1, 2]``; a parser error names anything else.

    Without the flag (``None``): seeds 0, 1 and 2, or 0 alone with ``--quick``.
    """
    if text is None:
        text = "0" if quick else "0,1,2"
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {text!r}")


def train(args: list[str], out: pathlib.Path, *, check: bool = True) -> dict | None:
    """Runs ``python -m jaxbp ARGS --out OUT``; returns its ``metrics.json``.

    The run's own lines (one per epoch) go to this script's output as they come.

    Args:
      args: the ``jaxbp`` arguments, from the command on.
      out: the run's ``--out`` folder.
      check: raise if the command fails; with ``False``, return ``None`` instead
        (a learning-rate grid, where a rate that diverges is a result).

    Raises:
      SystemExit: the command failed; the message names it and its exit status.
    """
    command = [sys.executable, "-m", "jaxbp", *args, "--out", str(out)]
    proc = subprocess.run(command, check=False)
    if proc.returncode != 0 and not check:
        return None
    if proc.returncode != 0:
        script = pathlib.Path(sys.argv[0]).stem
        raise SystemExit(
            f"{script}: `jaxbp {shlex.join(args)}` exited {proc.returncode}"
        )
    return json.loads((out / "metrics.json").read_text())


def train_runs(
    plan: Iterable[PlannedRun],
    record: MakeRecord,
    *,
    earlier: Iterable[dict] | None = None,
    after_each: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Trains every planned run in turn, each into a temporary folder.

    Args:
      plan: the runs, in the order to train them.
      record: makes a run's record from its ``metrics.json`` (see
        :data:`MakeRecord`).
      earlier: records of an earlier sitting. Those the plan does not train again
        are kept, and then the records are kept sorted by :func:`run_key`; with
        ``None`` (one sitting) they stay in the plan's order.
      after_each: called with the records so far after every run (to rewrite a
        result file, so that a run cut short keeps what it had).

    Returns:
      The records: the kept earlier ones and one per planned run.
    """
    plan = list(plan)
    planned = {run.key for run in plan}
    runs = [r for r in earlier or () if run_key(r) not in planned]
    prefix = f"{pathlib.Path(sys.argv[0]).stem}-"
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for i, run in enumerate(plan):
            print(f"\n$ {run.command}", flush=True)
            t0 = time.perf_counter()
            metrics = train(run.args, pathlib.Path(tmp) / str(i))
            runs.append(record(run, metrics, time.perf_counter() - t0))
            if earlier is not None:
                runs.sort(key=run_key)
            if after_each is not None:
                after_each(runs)
    return runs


def train_into_file(
    path: pathlib.Path,
    plan: list[PlannedRun],
    record: MakeRecord,
    *,
    command: str,
    header: dict,
    wanted: set[tuple[str, str, int]],
) -> dict:
    """Trains the plan into a result file that several sittings add to.

    The file holds ``{"commands": [...], **header, "complete": bool, "runs":
    [...]}``. Runs already in it that the plan does not train again are kept (a run
    of the same network, gradient and seed replaces its record); ``command`` is
    added to ``commands``; the file is rewritten after every run, with the runs
    sorted and ``complete`` true once it holds every run in ``wanted``.

    Returns:
      The file's record as last written.
    """
    old = json.loads(path.read_text()) if path.is_file() else {}
    result = {
        "commands": [*old.get("commands", []), command],
        **header,
        "complete": False,
        "runs": [],
    }

    def save(runs: list[dict]) -> None:
        result["runs"] = runs
        result["complete"] = wanted <= {run_key(r) for r in runs}
        _common.write_json(path, result)

    result["runs"] = train_runs(
        plan, record, earlier=old.get("runs", []), after_each=save
    )
    return result
