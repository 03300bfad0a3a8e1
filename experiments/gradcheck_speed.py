"""Gradient check speed: every coordinate, a sample and random directions on 784-100-10.

Times one call of ``jaxbp.check_network_grad`` (the MLP check, whose perturbed points
recompute only the layers above the perturbed leaf) and of ``jaxbp.check_grad`` (the
general check, which evaluates ``net.loss`` at every perturbed point, ``chunk`` at a
time under ``vmap``) on a 784-100-10 sigmoid network with softmax cross-entropy
(79,510 parameters), batch 32, in float64, for each finite-difference mode: every
coordinate, a sample of 64 coordinates per leaf, 16 random directions per leaf. Also
the Python default: ``check_network_grad(net, params, x, y)`` on float32 parameters with
no options, as in the README's quickstart. Each time is one whole call, compilation
included (every call compiles its own programs), the median over ``--repeats`` rounds
run interleaved. Writes gradcheck_speed.json.

Example:
  python experiments/gradcheck_speed.py
"""

import statistics
import sys
import time

import _common
import jax
import jax.numpy as jnp

import jaxbp

QUICK_SIZES = (20, 8, 4)
SIZES = (784, 100, 10)
BATCH = 32


def configs(net, quick: bool) -> dict:
    """``{name: (description, callable)}`` of the checks to time."""
    kp, kx = jax.random.split(jax.random.key(0))
    params32 = net.init(kp)
    x32 = jax.random.uniform(kx, (BATCH, net.sizes[0]))
    y = jnp.arange(BATCH) % net.sizes[-1]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda t: t.astype(jnp.float64), params32)
        x = x32.astype(jnp.float64)

    def mlp(fd):
        def run():
            with jax.enable_x64(True):
                return jaxbp.check_network_grad(net, params, x, y, fd=fd)

        return run

    def general(fd):
        def run():
            with jax.enable_x64(True):
                return jaxbp.check_grad(net.loss, net.manual_grad, params, x, y, fd=fd)

        return run

    out = {
        "python_default": (
            "check_gradients(net, params, x, y), float32 params, no options",
            lambda: jaxbp.check_network_grad(net, params32, x32, y),
        ),
        "mlp_all": ("check_gradients, float64, fd='all'", mlp("all")),
        "mlp_sample": (
            "check_gradients, float64, fd='sample' (64/leaf)",
            mlp("sample"),
        ),
        "mlp_directions": (
            "check_gradients, float64, fd='directions' (16/leaf)",
            mlp("directions"),
        ),
        "general_sample": (
            "check_grad, float64, fd='sample' (64/leaf)",
            general("sample"),
        ),
        "general_directions": (
            "check_grad, float64, fd='directions' (16/leaf)",
            general("directions"),
        ),
        "general_all": ("check_grad, float64, fd='all'", general("all")),
    }
    return out


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args(argv)
    net = jaxbp.MLP(QUICK_SIZES if args.quick else SIZES, activation="sigmoid")
    repeats = 1 if args.quick else args.repeats
    checks = configs(net, args.quick)
    print(f"{net}: {net.num_params:,} parameters, batch {BATCH}; {repeats} rounds")
    samples = {name: [] for name in checks}
    coverage, passed = {}, {}
    for _ in range(repeats):
        for name, (_, run) in checks.items():
            t0 = time.perf_counter()
            report = run()
            samples[name].append(time.perf_counter() - t0)
            coverage[name] = report.comparisons[-1].coverage
            passed[name] = report.passed
    results = {}
    for name, (description, _) in checks.items():
        median = statistics.median(samples[name])
        results[name] = {
            "description": description,
            "median_s": median,
            "samples_s": samples[name],
            "coverage": coverage[name],
            "passed": passed[name],
        }
        print(f"{name:>19}: {median:6.2f} s  {description}; {coverage[name]}")
    path = _common.write_json(
        args.out / "gradcheck_speed.json",
        {
            "quick": args.quick,
            "network": str(net),
            "num_params": net.num_params,
            "batch": BATCH,
            "repeats": repeats,
            "results": results,
            "environment": _common.environment(),
        },
    )
    print(f"wrote {path}")
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
