"""litzoo's shared core: CLI, fusion math, layers, data transforms, checkpoints and export.

Dependencies point one way: ``modules``, ``callbacks`` and ``datamodules`` import ``framework``;
``framework`` imports only torch, lightning and the ecosystem libraries.
"""

from litzoo.framework.errors import LitzooError

__all__ = ["LitzooError"]
__version__ = "0.1.0"
