#!/usr/bin/env python3
"""Write a synthetic binary-classification CSV for the scikit-learn example.

Format matches what `train` expects: no header, numeric columns, the last
column is the 0/1 label. The same arguments always give the same file.

    python3 make_data.py data/train.csv --rows 500 --features 4 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_dataset(rows: int, features: int, seed: int) -> np.ndarray:
    """Return a (rows, features + 1) array; the last column is the label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    weights = rng.normal(size=features)
    # Noise keeps the problem from being perfectly separable, so accuracy is
    # high but below 1.0 and regularisation changes have a visible effect.
    logits = x @ weights + rng.normal(scale=0.5, size=rows)
    y = (logits > 0).astype(float)
    return np.column_stack([x, y])


def write_csv(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n_features = data.shape[1] - 1
    np.savetxt(path, data, delimiter=",", fmt=["%.6f"] * n_features + ["%d"])


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
