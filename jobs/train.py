"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --config configs/<file>.yaml`.

The driver only plans and counts; data moves between Ray workers and object storage."""

import sys

from varireal_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
