"""Script-mode training for the smlocal workshop: scikit-learn, run by the SageMaker training toolkit.

The toolkit inside the image runs this as `python3 train.py --alpha 0.5 --max_iter 200`: the job's
hyperparameters become command-line arguments, and the SM_* environment variables say where the
channels, the model folder and the output folder are. Nothing here knows about smlocal; the same
file runs on SageMaker, baked into an image (`SAGEMAKER_PROGRAM`) or shipped as a source_dir.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    # Hyperparameters.
    parser.add_argument("--alpha", type=float, default=1.0, help="regularisation strength (C = 1/alpha)")
    parser.add_argument("--max_iter", type=int, default=100)
    # Where SageMaker puts things, as the toolkit tells it.
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    # SDKs may add arguments of their own; they are not ours to refuse.
    args, _ = parser.parse_known_args()
    return args


def load(channel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every file of the channel as headerless numeric CSV; the last column is the label."""
    files = sorted(p for p in channel.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no data files under {channel}")
    data = np.vstack([np.loadtxt(f, delimiter=",", ndmin=2) for f in files])
    print(f"read {data.shape[0]} rows from {len(files)} file(s) in {channel}")
    return data[:, :-1], data[:, -1]


def main() -> None:
    args = parse_args()
    if args.alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {args.alpha}")
    features, labels = load(Path(args.train))
    model = LogisticRegression(C=1.0 / args.alpha, max_iter=args.max_iter)
    model.fit(features, labels)
    accuracy = float(model.score(features, labels))
    # Read by MetricDefinitions such as {"Name": "train:accuracy", "Regex": "train_accuracy=([0-9.]+)"}.
    print(f"train_accuracy={accuracy:.4f}")

    model_dir = Path(args.model_dir)
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "metadata.json").write_text(json.dumps({
        "model": type(model).__name__, "alpha": args.alpha, "max_iter": args.max_iter,
        "n_samples": int(features.shape[0]), "n_features": int(features.shape[1]),
        "train_accuracy": accuracy, "training_job_name": os.environ.get("TRAINING_JOB_NAME"),
    }, indent=2) + "\n")
    output_data = Path(args.output_data_dir)
    output_data.mkdir(parents=True, exist_ok=True)
    (output_data / "metrics.json").write_text(json.dumps({"train_accuracy": accuracy}) + "\n")
    print(f"saved {model_dir / 'model.joblib'}")


if __name__ == "__main__":
    main()
