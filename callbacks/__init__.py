"""Cross-cutting training techniques as Lightning callbacks, usable on any LightningModule."""

from callbacks.reparam_fusion import ReparamFusion

__all__ = ["ReparamFusion"]
