"""How long loading a whole dataset from its gzip IDX archives takes.

Times ``jaxbp.data.load_dataset`` (decompress, parse, validate) for every split of a
dataset, several times, and reports the median. Prints a table and writes JSON.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/data_load_speed.py --repeats 5
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxbp.data import SPLITS, dataset_spec, load_dataset  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "data_load_speed.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="mnist or fashion_mnist (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="folder holding the dataset's files (default: the usual search: "
        "$JAXBP_DATA_DIR/<folder>, then the cache)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SPLITS),
        help="splits to load (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs (default: %(default)s)"
    )
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=RESULTS,
        help="JSON file to write (default: experiments/results/data_load_speed.json)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = dataset_spec(args.dataset)

    def load_all() -> int:
        n = 0
        for split in args.splits:
            images, _ = load_dataset(spec, split, data_dir=args.data_dir, offline=True)
            n += len(images)
        return n

    num_images = load_all()  # warm-up: file system cache, imports
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        load_all()
        seconds.append(time.perf_counter() - start)
    result = {
        "dataset": spec.name,
        "splits": args.splits,
        "num_images": num_images,
        "repeats": args.repeats,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "seconds": seconds,
        "images_per_s": num_images / statistics.median(seconds),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"{spec.name} {'+'.join(args.splits)}: {num_images} images, median "
        f"{result['median_s']:.3f} s over {args.repeats} runs "
        f"(min {result['min_s']:.3f} s, max {result['max_s']:.3f} s, "
        f"{result['images_per_s']:,.0f} images/s)"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
