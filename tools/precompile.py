"""Byte-compile what the project imports, once, right after ``pip install --no-compile`` (``make venv``).

pip byte-compiles every Python file it installs: about half of the installation's time, nearly all
of it for torch's thousands of modules, of which the project imports a few hundred. The Makefile
installs with ``--no-compile`` and then runs this script, which imports the modules of every entry
point (training, inference, evaluation, the demo, the quick start's steps, the tests' runner) with
writing ``.pyc`` files allowed, even where ``PYTHONDONTWRITEBYTECODE`` forbids it for the other
processes, which then load the compiled files (where nothing is compiled, every process compiles
torch and transformers anew on import, more than doubling its start). A module that none of these
imports is compiled by Python when first imported, as it does by default, or on every import where
``PYTHONDONTWRITEBYTECODE`` is set.

    python tools/precompile.py
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENTRY_MODULES = (
    "main", "engine", "inference_ytvos", "inference_davis", "eval_davis", "demo",
    "models.referformer", "models.text_encoder", "models.pretrained",
    "tools.quickstart", "tools.data.make_ref_shapes", "tools.data.train_text_encoder", "tools.eval_ref_shapes",
    "tools.plot_log", "tools.compare_masks",
    "pytest",
)
"""The entry points (they import the model, data and evaluation code and its libraries), and the tests' runner."""
RUN_TIME_MODULES = ("PIL.JpegImagePlugin", "PIL.GifImagePlugin", "matplotlib.backends.backend_agg")
"""Imported only when used (reading JPEG frames, writing the overlay GIF and the training curves)."""


def main() -> None:
    sys.dont_write_bytecode = False
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    for name in ENTRY_MODULES + RUN_TIME_MODULES:
        importlib.import_module(name)
    print(f"compiled the imports of {len(ENTRY_MODULES)} entry modules ({len(sys.modules)} modules) "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
