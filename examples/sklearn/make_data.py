#!/usr/bin/env python3
"""Write a synthetic binary-classification CSV for the scikit-learn example.

Format matches what `train` expects: no header, numeric columns, the last
column is the 0/1 label. The same arguments always give the same file.
Standard library only, so a workshop attendee needs nothing beyond Python.

    python3 make_data.py data/train.csv --rows 500 --features 4 --seed 0
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def make_dataset(rows: int, features: int, seed: int) -> list[tuple[list[float], int]]:
    """Return (features, label) rows."""
    rng = random.Random(seed)
    weights = [rng.gauss(0, 1) for _ in range(features)]
    data = []
    for _ in range(rows):
        x = [rng.gauss(0, 1) for _ in range(features)]
        # Noise keeps the problem from being perfectly separable, so accuracy is
        # high but below 1.0 and regularisation changes have a visible effect.
        logit = sum(w * v for w, v in zip(weights, x, strict=True)) + rng.gauss(0, 0.5)
        data.append((x, int(logit > 0)))
    return data


def write_csv(path: Path, data: list[tuple[list[float], int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for x, label in data:
            out.write(",".join(f"{v:.6f}" for v in x) + f",{label}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="CSV file to write (parent dirs are created)")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < 2 or args.features < 1:
        parser.error("need --rows >= 2 and --features >= 1")
    write_csv(args.path, make_dataset(args.rows, args.features, args.seed))
    print(f"wrote {args.rows} rows x {args.features} features to {args.path}")


if __name__ == "__main__":
    main()
