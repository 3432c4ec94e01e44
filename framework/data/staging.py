"""Generated data folders appear whole or not at all.

A DataModule that writes its own data (the SYNTHETIC sets, the digits caption pool) may run in several
processes at once: DDP ranks, parallel tests. Each writes into a private sibling folder and renames it
into place in one step; a process that loses the race drops its copy (every writer makes the same data
from the same seed), so no reader ever sees a half-written folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def generate_folder_atomically(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging)`` on a fresh sibling of ``folder`` and rename it to ``folder``.

    The caller checks first whether ``folder`` is complete; when another process renames its copy first,
    this one's is removed. A ``write`` that raises leaves nothing behind."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it owner-only; generated data is ordinary data
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        if staging.exists():  # lost the race, or write failed
            shutil.rmtree(staging, ignore_errors=True)
    return folder
