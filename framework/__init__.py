"""litzoo's core (installed as ``litzoo.framework``): the ground the methods, callbacks and DataModules stand on.

Shared pieces live in flat toolboxes (``nn/`` layers, ``losses/``, ``data/`` plumbing and batch helpers,
``reparam/`` fusion, ``pruning/``, ``graph/``), and what several methods of one domain share in a named wing
(``nas/``, ``curation/``, ...). It imports only torch, lightning and the ecosystem libraries: never
``litzoo.modules``, ``litzoo.callbacks``, ``litzoo.datamodules`` or ``litzoo.cli`` (``tests/test_import_rules.py``).
"""

from litzoo.framework.errors import LitzooError

__all__ = ["LitzooError"]
