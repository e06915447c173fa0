"""Train the ShapeWorld attribute network that judges generated images, and ship it in data/.

    python scripts/train_attribute_net.py               # a few minutes on 2 CPU cores

Made by this script: data/shapeworld_attribute_net.safetensors (+ .json, + sha256 in data/manifest.json).
The accuracy it prints is per pixel on fresh images; the adherence of real images to their own
captions is measured in tests/test_evaluators.py and notebook 00.
"""

import argparse
import time

import torch

from course_lib.checkpoints import save_checkpoint
from course_lib.classifiers import ATTRIBUTE_NET, train_attribute_net
from course_lib.shapeworld import ShapeWorld
from course_lib.utils import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seed_everything(args.seed)
    start = time.time()
    model, losses = train_attribute_net(args.images, args.epochs, seed=args.seed)
    minutes = (time.time() - start) / 60
    test = ShapeWorld().sample(2000, seed=12345, split="all")
    shape_mask, color_mask = (torch.from_numpy(m).long() for m in test.semantic_masks())
    with torch.no_grad():
        s, c = model(test.tensors())
    fg = shape_mask > 0
    shape_acc = (s.argmax(1)[fg] == shape_mask[fg]).float().mean().item()
    color_acc = (c.argmax(1)[fg] == color_mask[fg]).float().mean().item()
    print(f"foreground pixel accuracy: shape {shape_acc:.4f}, colour {color_acc:.4f}; "
          f"trained in {minutes:.1f} min")
    save_checkpoint(model, ATTRIBUTE_NET, config=model.config,
                    command=f"python scripts/train_attribute_net.py --images {args.images} "
                            f"--epochs {args.epochs} --seed {args.seed}",
                    metrics={"shape_pixel_accuracy": round(shape_acc, 4),
                             "color_pixel_accuracy": round(color_acc, 4),
                             "train_minutes": round(minutes, 2)})


if __name__ == "__main__":
    main()
