"""A proxy check of the MNIST defaults on the only MNIST images we have offline.

The issue asks that ``jaxbp train``'s defaults reach, on the full MNIST training set, at
least 0.98 test accuracy for 784-512-512-10 ReLU with Adam and at least 0.95 for the
classic 784-30-10 sigmoid network with SGD (Nielsen's figure). Our offline machines
lack MNIST's 60,000 training images, so that cannot be measured here. This script
measures the closest honest thing: the same configurations, with the CLI's default
optimizer settings, trained on the first ``--train`` images of MNIST's official test
split and evaluated on the remaining ones. With 6x less training data than the real
run, the accuracies it prints are a lower bound in spirit, not the number the issue
asks for; the README quotes them as such.

Run ``python experiments/mnist_proxy.py`` (needs ``JAXBP_DATA_DIR`` or the MNIST test
files in the cache); ``--quick`` trains one short epoch for a smoke test.
"""

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from jaxbp import MLP, data, optim, train

CONFIGS = {
    # name: (hidden, activation, optimizer)
    "784-512-512-10 relu adam": ((512, 512), "relu", "adam"),
    "784-30-10 sigmoid sgd": ((30,), "sigmoid", "sgd"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000, help="training images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one short epoch")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train = 1, 2000

    images, labels = data.load_dataset("mnist", "test")
    x = images.reshape(len(images), -1)
    y = labels.astype(np.int32)
    train_xy = (x[: args.train], y[: args.train])
    test_xy = (x[args.train :], y[args.train :])
    results = {
        "what": "proxy: trained on MNIST test[:train], evaluated on MNIST test[train:]",
        "train_examples": len(train_xy[0]),
        "test_examples": len(test_xy[0]),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "runs": {},
    }
    for name, (hidden, activation, opt_name) in CONFIGS.items():
        net = MLP((784, *hidden, 10), activation)
        lr = optim.DEFAULT_LEARNING_RATES[opt_name]
        steps = args.epochs * (len(train_xy[0]) // args.batch_size)
        optimizer = optim.make_optimizer(
            opt_name, lr, schedule="cosine", total_steps=steps
        )
        state = train.init_train_state(net, optimizer, jax.random.key(args.seed))
        t0 = time.perf_counter()
        _, logs, _ = train.fit(
            net,
            optimizer,
            state,
            train_xy,
            epochs=args.epochs,
            batch_size=args.batch_size,
            test_data=test_xy,
        )
        accuracy = logs[-1].test_accuracy
        results["runs"][name] = {
            "optimizer": opt_name,
            "lr": lr,
            "schedule": "cosine",
            "test_accuracy": accuracy,
            "accuracy_per_epoch": [log.test_accuracy for log in logs],
            "wall_s": time.perf_counter() - t0,
        }
        print(
            f"{name:<28} {opt_name} lr {lr:g} cosine: "
            f"proxy test accuracy {accuracy:.4f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mnist_proxy.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
