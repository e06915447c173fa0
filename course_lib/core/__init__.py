"""The foundation layer: what every notebook and every other layer needs, and nothing course-specific.

Paths and the data folder (``paths``), seeding, devices and progress bars (``utils``), checkpoints
with checksums and their one error, ``CheckpointError`` (``checkpoints``), plotting (``plotting``),
exercise checks (``exercises``), Colab links (``links``) and command-line help (``cli``).
It imports nothing else from ``course_lib``; every other layer may import it. ``plotting`` (which
loads matplotlib) is not re-exported here, to keep this import cheap.
"""

from course_lib.core.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_manifest,
    save_checkpoint,
)
from course_lib.core.exercises import check
from course_lib.core.paths import REPO_ROOT, data_dir
from course_lib.core.utils import count_parameters, get_device, progress, seed_everything

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "read_manifest", "save_checkpoint", "check",
           "REPO_ROOT", "data_dir", "count_parameters", "get_device", "progress", "seed_everything"]
