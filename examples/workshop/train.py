"""The workshop's training script (script mode): a linear classifier trained epoch by epoch.

The SageMaker training toolkit runs it as `python3 train.py --epochs 20 --learning_rate 0.001 ...` (the
job's hyperparameters as arguments) with the SM_* variables saying where the channels and the model
folder are. Each epoch prints one line such as

    epoch=3 train_loss=0.4121 validation_accuracy=0.8750

which the job's MetricDefinitions turn into the metrics the console charts, and saves the model so far:
a job stopped half-way still leaves the last epoch's model in model.tar.gz. `--epoch_seconds` slows the
epochs down so there is time to watch them. Nothing here knows about smlocal.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=0.001)
    parser.add_argument("--alpha", type=float, default=0.0001, help="L2 regularisation")
    parser.add_argument("--epoch_seconds", type=float, default=1.0, help="pause after each epoch")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--validation", default=os.environ.get("SM_CHANNEL_VALIDATION"))
    args, _ = parser.parse_known_args()
    return args


def load(channel: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(p for p in channel.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no data files under {channel}")
    data = np.vstack([np.loadtxt(f, delimiter=",", ndmin=2) for f in files])
    print(f"read {data.shape[0]} rows from {len(files)} file(s) in {channel}", flush=True)
    return data[:, :-1], data[:, -1]


def main() -> None:
    args = parse_args()
    if args.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {args.learning_rate}")
    features, labels = load(Path(args.train))
    validation = load(Path(args.validation)) if args.validation else (features, labels)
    classes = np.unique(labels)
    model = SGDClassifier(loss="log_loss", alpha=args.alpha, learning_rate="constant", eta0=args.learning_rate,
                          random_state=0)
    model_dir = Path(args.model_dir)
    for epoch in range(1, args.epochs + 1):
        model.partial_fit(features, labels, classes=classes)
        loss = log_loss(labels, model.predict_proba(features), labels=classes)
        accuracy = float(model.score(*validation))
        print(f"epoch={epoch} train_loss={loss:.4f} validation_accuracy={accuracy:.4f}", flush=True)
        joblib.dump(model, model_dir / "model.joblib")
        (model_dir / "metadata.json").write_text(json.dumps({
            "epochs_done": epoch, "learning_rate": args.learning_rate, "alpha": args.alpha,
            "train_loss": loss, "validation_accuracy": accuracy,
            "training_job_name": os.environ.get("TRAINING_JOB_NAME"),
        }, indent=2) + "\n")
        if epoch < args.epochs:
            time.sleep(args.epoch_seconds)
    print(f"saved {model_dir / 'model.joblib'} after {args.epochs} epochs", flush=True)


if __name__ == "__main__":
    main()
