"""Published methods as LightningModules, one file per method."""

from modules.repvgg import RepVGG, RepVGGClassifier

__all__ = ["RepVGG", "RepVGGClassifier"]
