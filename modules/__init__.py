"""Published methods as LightningModules, one file per method."""

from litzoo.modules.repvgg import RepVGG, RepVGGClassifier

__all__ = ["RepVGG", "RepVGGClassifier"]
