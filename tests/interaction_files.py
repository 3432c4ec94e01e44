"""A small folder of per-domain interaction files in the formats recommender users have on disk, for configs that
read ``InteractionFolderDataModule``: ``movie.inter`` (RecBole atomic, dense), ``book.csv`` (``user,item,rating,timestamp``,
the sparse domain) and ``music.inter`` (dense), converted from the SYNTHETIC shared-taste generator."""

from __future__ import annotations

import shutil
from pathlib import Path

from litzoo.datamodules.interactions import write_shared_taste_domains


def write_interaction_folder(root: str | Path, seed: int = 0) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    generated = write_shared_taste_domains(root.parent / f"{root.name}-generated", num_domains=3, sparse_domain=1, seed=seed)
    shutil.copyfile(generated / "d0.inter", root / "movie.inter")
    shutil.copyfile(generated / "d2.inter", root / "music.inter")
    rows = (generated / "d1.inter").read_text(encoding="utf-8").splitlines()[1:]
    csv = ["user,item,rating,timestamp"] + [",".join(line.split("\t")) for line in rows]
    (root / "book.csv").write_text("\n".join(csv) + "\n", encoding="utf-8")
    return root
