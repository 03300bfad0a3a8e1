"""Helpers shared by the experiment scripts: flags, result files, machine facts, plots.

Not part of the library: the scripts in ``experiments/`` import it as a sibling module
(``python experiments/NAME.py`` puts this folder first on ``sys.path``).
"""

import argparse
import csv
import importlib
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

#: Where full runs write their results: ``experiments/results`` beside this file. The
#: README quotes the files here, so only full runs may write here.
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"

#: Where ``--quick`` smoke runs write unless ``--out`` says otherwise (gitignored), so
#: that a smoke run never overwrites the published results.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"


class _ExperimentParser(argparse.ArgumentParser):
    """Fills in ``--out`` after parsing: its default depends on ``--quick``."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if getattr(parsed, "out", None) is None:
            parsed.out = QUICK_RESULTS_DIR if parsed.quick else RESULTS_DIR
        return parsed, extras


def make_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every experiment has: ``--quick``, ``--out``.

    Without ``--out``, a full run writes to ``experiments/results/`` and a ``--quick``
    run to ``experiments/results/quick/``, so smoke runs never overwrite the
    published results.

    Args:
      doc: the script's module docstring; its first line is the description and the
        rest is shown after the options.

    Returns:
      The parser; ``parse_args`` gives a namespace with ``quick`` (bool) and ``out``
      (a ``pathlib.Path``, always set).
    """
    first, _, rest = doc.strip().partition("\n")
    parser = _ExperimentParser(
        description=first,
        epilog=rest.strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a seconds-long smoke run on tiny settings (for tests)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="folder for the JSON/CSV/PNG results (default experiments/results, or "
        "experiments/results/quick with --quick)",
    )
    return parser


def environment(**extra) -> dict:
    """Versions and machine facts recorded beside every result.

    Args:
      **extra: more entries to record (the script's own settings).

    Returns:
      A JSON-ready dict: library versions (``torch_version`` is ``None`` when
      PyTorch is not installed), the machine, the JAX device and backend, the load
      average when the run started, the date, and ``extra``.
    """
    import optax

    device = jax.devices()[0]
    record = {
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "optax_version": optax.__version__,
        "torch_version": _version_of("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": f"{device.platform} ({device.device_kind})",
        "backend": jax.default_backend(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    record.update(extra)
    return record


def cpu_model() -> str | None:
    """The processor's name from ``/proc/cpuinfo`` (Linux), else ``platform``'s."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that ran a script: ``python experiments/NAME.py ARGS``.

    Args:
      script: the script's ``__file__``.
      argv: the arguments given to its ``main``; ``None`` means ``sys.argv[1:]``.
    """
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"experiments/{pathlib.Path(script).name}", *args])


def _version_of(module: str) -> str | None:
    """``module.__version__`` if it can be imported, else None."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def _jsonable(value):
    """Converts NumPy/JAX scalars and arrays (and NaN) into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else str(value)
    return value


def write_json(path: pathlib.Path, record: dict) -> pathlib.Path:
    """Writes ``record`` as indented JSON (NaN becomes ``null``); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return path


def write_csv(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """Writes a list of flat dicts as CSV (columns from the first row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(_jsonable(rows))
    return path


def run_catalogue(
    cases: Iterable[tuple], run_case: Callable[..., dict], line: Callable[[dict], str]
) -> tuple[list[dict], float]:
    """Checks every case of a bug catalogue, printing one line per case as it comes.

    Args:
      cases: the arguments of ``run_case``, one tuple per case.
      run_case: checks one case; returns its row, with ``correct`` (the checker
        caught and named what it should).
      line: the printed line of a row.

    Returns:
      The rows and the seconds they took.
    """
    t0 = time.perf_counter()
    rows = []
    for case in cases:
        rows.append(run_case(*case))
        print(line(rows[-1]), flush=True)
    return rows, time.perf_counter() - t0


def write_catalogue(
    out: pathlib.Path,
    name: str,
    rows: list[dict],
    elapsed: float,
    table: str,
    header: dict,
) -> int:
    """Prints a bug catalogue's table and writes ``NAME.json`` and ``NAME.md``.

    The JSON holds ``header``, then ``rows``, ``as_expected`` (rows with ``correct``),
    ``cases``, ``elapsed_s`` and ``environment``; the Markdown file holds ``table``.

    Returns:
      The exit status: 1 if any row is not ``correct``, else 0.
    """
    wrong = [r for r in rows if not r["correct"]]
    print(f"\n{table}\n\n{len(rows) - len(wrong)} of {len(rows)} cases as expected "
          f"in {elapsed:.0f} s")  # fmt: skip
    json_path = write_json(
        out / f"{name}.json",
        header
        | {
            "rows": rows,
            "as_expected": len(rows) - len(wrong),
            "cases": len(rows),
            "elapsed_s": elapsed,
            "environment": environment(),
        },
    )
    md_path = out / f"{name}.md"
    md_path.write_text(table + "\n")
    print(f"wrote {json_path}, {md_path}")
    return 1 if wrong else 0


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def time_interleaved(fns: dict, *, repeats: int, number: int) -> dict[str, dict]:
    """Median seconds per call of several functions, timed interleaved.

    Each function is a no-argument callable returning JAX arrays; it is called once
    to warm up (compile), then ``repeats`` rounds each call every function ``number``
    times in turn, so that load from other processes falls on all of them alike.

    Returns:
      ``{name: {"median_s", "min_s", "max_s", "samples_s"}}``, per call.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - t0) / number)
    return {
        name: {
            "median_s": statistics.median(s),
            "min_s": min(s),
            "max_s": max(s),
            "samples_s": s,
        }
        for name, s in samples.items()
    }


def measure_gemm_peak(n: int, repeats: int) -> dict:
    """Float32 ``(n, n) @ (n, n)`` GFLOP/s in JAX (jit) and NumPy, interleaved."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    a_dev, b_dev = jax.device_put(a), jax.device_put(b)
    dot = jax.jit(jnp.dot)
    timing = time_interleaved(
        {"jax": lambda: dot(a_dev, b_dev), "numpy": lambda: np.dot(a, b)},
        repeats=repeats,
        number=1,
    )
    flops = 2 * n**3
    jax_gflops = flops / timing["jax"]["median_s"] / 1e9
    np_gflops = flops / timing["numpy"]["median_s"] / 1e9
    return {
        "n": n,
        "jax_gflops": jax_gflops,
        "numpy_gflops": np_gflops,
        "peak_gflops": max(jax_gflops, np_gflops),
    }


def median_seconds(fn, *, repeats: int) -> dict:
    """Times ``fn()`` ``repeats`` times after one warm-up call.

    For host-side work (file reading, NumPy); for JAX functions, whose calls return
    before the work is done, use :func:`time_interleaved`.

    Returns:
      ``{"median_s", "min_s", "max_s", "samples_s"}``.
    """
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": samples,
    }


def _busy_cpu_s() -> float | None:
    """CPU seconds every process on the machine has used so far (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores that *other* processes kept busy during a ``with`` block.

    Other people's jobs on a small machine skew a benchmark; this measures them so
    that the results can say so: ``/proc/stat`` busy time minus this process's CPU
    time, over the block's wall time. ``cores`` is ``None`` where ``/proc/stat`` is
    missing (not Linux).

    Examples:
      >>> with OtherLoad() as load:  # doctest: +SKIP
      ...     run_benchmark()
      >>> load.cores  # doctest: +SKIP
      0.12
    """

    cores: float | None = None

    def __enter__(self):
        self._busy = _busy_cpu_s()
        self._own = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy = _busy_cpu_s()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            self.cores = None
        else:
            own = time.process_time() - self._own
            self.cores = max(0.0, (busy - self._busy - own) / wall)
        return False


def human_seconds(seconds: float) -> str:
    """``93.2`` -> ``"1.6 min"``; picks s, min, h, days or years."""
    for unit, size in (
        ("years", 365.25 * 86400),
        ("days", 86400),
        ("h", 3600),
        ("min", 60),
    ):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1e3:.3g} ms"
