#!/usr/bin/env python3
"""The workshop's data set: two classes of points, as headerless numeric CSV (the last column is the label).

    python3 examples/workshop/make_dataset.py /tmp/workshop-data [--rows 4000] [--features 4] [--seed 7]

writes `<out>/train/part-0000.csv` .. (several files, as data sets on S3 usually are) and
`<out>/validation/part-0000.csv`. The same seed gives the same files, byte for byte, on every machine,
so a teacher can make them once and every attendee gets the same numbers. Plain Python, no packages.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def rows(count: int, features: int, spread: float, rng: random.Random) -> list[str]:
    """Class 1 sits around +0.6 in every feature, class 0 around -0.6; `spread` makes them overlap."""
    lines = []
    for _ in range(count):
        label = rng.randint(0, 1)
        centre = 0.6 if label else -0.6
        values = [rng.gauss(centre, spread) for _ in range(features)]
        lines.append(",".join(f"{v:.5f}" for v in values) + f",{label}")
    return lines


def write_parts(folder: Path, lines: list[str], parts: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(lines) // parts)
    written = []
    for i in range(parts):
        chunk = lines[i * size:(i + 1) * size]
        if chunk:
            path = folder / f"part-{i:04d}.csv"
            path.write_text("\n".join(chunk) + "\n")
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write train/ and validation/ into")
    parser.add_argument("--rows", type=int, default=4000, help="rows in all (default 4000)")
    parser.add_argument("--features", type=int, default=4, help="feature columns (default 4)")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="share of rows held out (0.2)")
    parser.add_argument("--train-files", type=int, default=4, help="files the train rows are split into (4)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise around each class centre (1.0)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.rows < 2 or args.features < 1 or not 0 < args.validation_fraction < 1 or args.train_files < 1:
        parser.error("need --rows >= 2, --features >= 1, 0 < --validation-fraction < 1, --train-files >= 1")

    rng = random.Random(args.seed)
    lines = rows(args.rows, args.features, args.spread, rng)
    held_out = max(1, int(len(lines) * args.validation_fraction))
    train = write_parts(args.out / "train", lines[held_out:], args.train_files)
    validation = write_parts(args.out / "validation", lines[:held_out], 1)
    for path in train + validation:
        print(f"{path}  {sum(1 for _ in path.open())} rows")


if __name__ == "__main__":
    main()
