"""What a learning rule's epoch costs beside a hand-derived backprop epoch.

Compiles one training epoch (``jaxbp.train.make_train_epoch``, the program ``jaxbp
train`` runs: 60,000 examples, batch 64, Adam) of each network with ``grad="manual"``
and with each learning rule of :mod:`jaxbp.feedback`, without the alignment
measurements (``align_every=None``; the per-epoch measurement of ``train_epochs`` runs
outside the epoch), and times them interleaved (``_common.time_interleaved``): every
round runs each variant once in turn, so that the load of other processes falls on
all alike. Reports the median epoch time and each rule's ratio to backprop (the
issue's bound for feedback alignment: 1.05).

The pixels are random ``uint8`` of MNIST's shape (the time does not depend on their
values). ``--quick``: 6,400 examples, two rounds.

Writes ``learning_rules_speed.json``.

Example:
  python experiments/learning_rules_speed.py
"""

import _common
import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import feedback, optim, train
from jaxbp.mlp import MLP

NETWORKS = {
    "784-1000-10 sigmoid": (MLP((784, 1000, 10), "sigmoid"), ("feedback-alignment",)),
    "784-800-800-10 tanh": (MLP((784, 800, 800, 10), "tanh"), feedback.RULES),
}
BATCH = 64


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds (default 5; 2 with --quick)"
    )
    parser.add_argument(
        "--networks",
        default=",".join(NETWORKS),
        help="comma-separated network names to time (default: all)",
    )
    args = parser.parse_args(argv)
    names = args.networks.split(",")
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {list(NETWORKS)}")
    repeats = args.repeats or (2 if args.quick else 5)
    n = 6400 if args.quick else 60000
    environment = _common.environment()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (n, 784), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    optimizer = optim.make_optimizer("adam", 1e-3)
    results = []
    for name in names:
        net, rules = NETWORKS[name]
        fns = {}
        for grad in ("manual", *rules):
            state = train.init_train_state(net, optimizer, jax.random.key(0), grad=grad)
            epoch = train.make_train_epoch(net, optimizer, batch_size=BATCH, grad=grad)
            compiled = epoch.lower(state, x, y).compile()
            fns[grad] = lambda c=compiled, s=state: c(s, x, y)
        print(f"{name}: timing {', '.join(fns)} x {repeats} rounds", flush=True)
        timing = _common.time_interleaved(fns, repeats=repeats, number=1)
        bp = timing["manual"]["median_s"]
        for grad, t in timing.items():
            ratios = [
                s / b
                for s, b in zip(
                    t["samples_s"], timing["manual"]["samples_s"], strict=True
                )
            ]
            row = {
                "network": name,
                "grad": grad,
                "examples": n,
                "median_epoch_s": t["median_s"],
                "ratio_of_medians": t["median_s"] / bp,
                "median_of_round_ratios": float(np.median(ratios)),
                "samples_s": t["samples_s"],
            }
            results.append(row)
            print(
                f"  {grad:<26} {t['median_s']:7.2f} s  x{row['ratio_of_medians']:.3f} "
                f"(median round ratio x{row['median_of_round_ratios']:.3f})",
                flush=True,
            )
    record = {
        "command": _common.command_line(__file__, argv),
        "quick": args.quick,
        "repeats": repeats,
        "batch_size": BATCH,
        "environment": environment,
        "results": results,
    }
    suffix = (
        ""
        if len(names) == len(NETWORKS)
        else "_" + "_".join(n.split()[0] for n in names)
    )
    path = _common.write_json(args.out / f"learning_rules_speed{suffix}.json", record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
