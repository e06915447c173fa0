"""Train the MNIST-5k digit classifier that judges generated digits, and ship it in data/.

    python scripts/train_digit_classifier.py            # about 1 minute on 2 CPU cores

Made by this script: data/digit_classifier.safetensors (+ .json, + its sha256 in data/manifest.json).
"""

import argparse
import time

import torch

from course_lib.checkpoints import save_checkpoint
from course_lib.classifiers import DIGIT_CLASSIFIER, train_digit_classifier
from course_lib.mnist import MNIST5k
from course_lib.utils import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seed_everything(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, test = MNIST5k("train"), MNIST5k("test")
    start = time.time()
    model, losses = train_digit_classifier(train.images, train.labels, epochs=args.epochs, seed=args.seed)
    minutes = (time.time() - start) / 60
    with torch.no_grad():
        acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
    print(f"test accuracy {acc:.4f} on {len(test)} held-back digits; trained in {minutes:.1f} min")
    save_checkpoint(model, DIGIT_CLASSIFIER, config=model.config,
                    command=f"python scripts/train_digit_classifier.py --epochs {args.epochs} --seed {args.seed}",
                    metrics={"test_accuracy": round(acc, 4), "train_minutes": round(minutes, 2),
                             "final_loss": round(sum(losses[-50:]) / 50, 4)})


if __name__ == "__main__":
    main()
