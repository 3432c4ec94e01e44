"""Generated data folders and written files appear whole or not at all.

A DataModule that writes its own data (the SYNTHETIC sets, the digits caption pool) may run in several
processes at once: DDP ranks, parallel tests. Each writes into a private sibling folder and renames it
into place in one step; a process that loses the race drops its copy (every writer makes the same data
from the same seed), so no reader ever sees a half-written folder.

Output files (curated manifests, their side files, graphs) are written the same way, one file at a time:
:func:`write_files_atomically` gives temporary siblings and renames them into place when the writing is done,
and :func:`check_writable` tries the output's folder before the long work that would fill it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from litzoo.framework.errors import LitzooError


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


# ---- files written whole: a kill mid-write leaves the previous file, never a shorter one ------------------------
def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # a folder cannot be opened for fsync on some systems: durability is best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def write_files_atomically(*paths: str | Path) -> Iterator[list[Path]]:
    """Temporary siblings of ``paths`` to write; each renamed onto its path when the block ends without an error.

        with write_files_atomically(output, output.with_suffix(".counts.npy")) as (staged_output, staged_counts):
            staged_output.write_text(...)
            numpy.save(staged_counts, counts)

    A temporary file lies in the folder of its target, so the rename is one atomic step of one file system,
    and keeps the target's suffix (``numpy.save`` appends ``.npy`` to a name without it). Until the rename the
    previous files stay as they were: a block that raises leaves them and removes its temporary files; a
    process killed in the block leaves them too, plus hidden ``.<name>.<random>.partial<suffix>`` files that
    no reader takes for output. The files are flushed to disk before the renames, which follow one another in
    the order given (a group of files is not renamed in one step: only a kill between two renames can leave
    the first new beside the second old). Folders are created as needed; new files get the usual permissions
    (``0o666`` less the umask), not the owner-only ones of :func:`tempfile.mkstemp`.
    """
    targets = [Path(path).expanduser() for path in paths]
    staged: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            while True:
                candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial{target.suffix}")
                try:
                    os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                except FileExistsError:
                    continue
                staged.append(candidate)
                break
        yield list(staged)
        for path in staged:
            _fsync(path)
        for path, target in zip(staged, targets, strict=True):
            os.replace(path, target)
        for folder in {target.parent for target in targets}:
            _fsync(folder, directory=True)
    finally:
        for path in staged:
            if path.exists():  # the block raised, or a rename failed: drop what was not moved into place
                path.unlink()


def check_writable(path: str | Path, what: str = "output") -> Path:
    """``path`` (expanded), after checking that a file can be written in its folder (created as needed), so that a
    long computation does not end in a write error and lose its result.

    Raises:
        LitzooError: naming ``path`` (as ``what``) and the reason: ``path`` is a folder, or its folder cannot be
            created or written (not a folder, read-only, no permission, full).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise LitzooError(f"{what} '{path}' is a folder; expected the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        blocking = next((folder for folder in path.parents if folder.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise LitzooError(f"{what} '{path}' cannot be written: '{blocking}' is a file, not a folder") from None
        raise LitzooError(f"{what} '{path}' cannot be written: {error.strerror or error} ('{path.parent}')") from None
    return path
