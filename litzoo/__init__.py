"""litzoo: published deep-learning methods ready to train with PyTorch Lightning, and training techniques
as callbacks for any LightningModule.

One import root, four rooms and a roof::

    litzoo.modules        one file per method (LightningModule + its plain nn.Module)
    litzoo.callbacks      one file per cross-cutting technique, for any LightningModule
    litzoo.datamodules    one file per data source or on-disk format
    litzoo.framework      the core the three stand on: layers, losses, fusion, pruning, data plumbing
    litzoo.cli            the ``litzoo`` command (the roof: the only package that imports all of them)

Importing ``litzoo`` imports nothing else; import what you use::

    from litzoo.callbacks import ResRepPruning, StructuralReparam
    from litzoo.modules.repvgg import RepVGGClassifier
"""

__version__ = "0.1.0"
