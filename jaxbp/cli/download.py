"""``jaxbp download``: fetch and verify both splits of a dataset into the cache."""

from jaxbp import data
from jaxbp.cli import _flags
from jaxbp.config import TrainConfig


def add_parser(sub) -> None:
    """Adds ``download`` to the ``jaxbp`` subcommands ``sub``."""
    dl = sub.add_parser(
        "download",
        help="download and verify a dataset into the cache",
        description="Fetch both splits of a dataset into the cache "
        "($JAXBP_CACHE_DIR, $XDG_CACHE_HOME/jaxbp or ~/.cache/jaxbp), verifying "
        "the published checksums.",
    )
    dl.add_argument(
        "--dataset",
        type=_flags.dataset,
        choices=_flags.DATASETS,
        default=TrainConfig().dataset,
        help="dataset to download (default: %(default)s)",
    )
    dl.set_defaults(func=run)


def run(args) -> int:
    """``jaxbp download``: fetch both splits into the cache."""
    for split in data.SPLITS:
        paths = data.fetch_split(args.dataset, split, progress=True)
        data.load_dataset(args.dataset, split)  # validates the structure too
        print(f"{args.dataset} {split}: {paths.images}, {paths.labels}")
    return 0
