"""The repository stands alone: no document, docstring or help text points to the specification or the
reference folder that the developers worked from (they are not part of a clone)."""
from __future__ import annotations

import re

from tests.golden import ROOT

# The developers' folder beside their clone, which a user's clone does not have (this test never reads it).
DEVELOPERS_FOLDER = "shared"
# Pointers outside the repository: "spec 4.1", "spec quirk 26", "SPEC.md", a path into the developers' folder.
OUTSIDE = re.compile(r"\bspec(?:\.md)?\s+(?:quirk\s+)?\d|\bSPEC\.md\b|\bquirk\s+\d|\.\./" + DEVELOPERS_FOLDER + r"\b",
                     re.IGNORECASE)
# Folders that hold no text of the repository's own (environments, generated data and outputs).
SKIPPED = {".git", ".venv", "data", "output", "demo_output", "__pycache__"}


def repository_texts() -> list:
    files = []
    for pattern in ("*.py", "*.md", "*.sh", "Makefile"):
        files += [path for path in ROOT.rglob(pattern)
                  if not SKIPPED & set(path.relative_to(ROOT).parts[:-1]) and path != ROOT / "tests" / "test_docs.py"]
    return files


def test_no_text_points_outside_the_repository():
    files = repository_texts()
    assert len(files) > 100 and ROOT / "README.md" in files  # the walk found the repository
    offending = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in files
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if OUTSIDE.search(line)]
    assert not offending, "\n".join(offending)
