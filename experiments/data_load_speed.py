"""How long loading a whole dataset from its gzip IDX archives takes.

Times ``jaxbp.data.load_dataset`` (decompress, parse, validate) of every split of a
dataset, several times after one warm-up, and reports the median. Never downloads:
the files come from ``--data-dir``, ``$JAXBP_DATA_DIR`` or the cache.

``--quick`` loads the test split once, for a smoke test.

Writes ``data_load_speed.json``.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/data_load_speed.py --repeats 7
"""

import pathlib

import _common

from jaxbp.data import SPLITS, DataError, dataset_spec, load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="mnist or fashion_mnist (default %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="folder holding the dataset's files themselves (default: the usual "
        "search, $JAXBP_DATA_DIR/<folder> then the cache)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=None,
        help="splits to load (default: train test; test with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs after the warm-up (default 7; 1 with --quick)",
    )
    args = parser.parse_args(argv)
    try:
        spec = dataset_spec(args.dataset)
    except ValueError as e:
        parser.error(str(e))
    splits = args.splits or (["test"] if args.quick else list(SPLITS))
    repeats = args.repeats or (1 if args.quick else 7)

    num_images = 0

    def load_all() -> None:
        nonlocal num_images
        num_images = 0
        for split in splits:
            images, _ = load_dataset(spec, split, data_dir=args.data_dir, offline=True)
            num_images += len(images)

    try:
        timing = _common.median_seconds(load_all, repeats=repeats)
    except DataError as e:
        parser.exit(
            1,
            f"{parser.prog}: error: {e}\nThis script never downloads; "
            f"`jaxbp download --dataset {spec.name}` fetches the files.\n",
        )
    result = {
        "command": _common.command_line(__file__, argv),
        "environment": _common.environment(),
        "dataset": spec.name,
        "splits": splits,
        "num_images": num_images,
        "repeats": repeats,
        **timing,
        "images_per_s": num_images / timing["median_s"],
    }
    print(
        f"{spec.name} {'+'.join(splits)}: {num_images:,} images, median "
        f"{timing['median_s']:.3f} s over {repeats} runs (min {timing['min_s']:.3f} s, "
        f"max {timing['max_s']:.3f} s, {result['images_per_s']:,.0f} images/s)"
    )
    path = _common.write_json(args.out / "data_load_speed.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
