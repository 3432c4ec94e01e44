"""Cross-cutting training techniques as Lightning callbacks, usable on any LightningModule."""

from callbacks.curation_in_training import CurationInTraining
from callbacks.fastclip import FastClip
from callbacks.gsm import GlobalSparseMomentum
from callbacks.probe import KNNProbe, LinearProbe
from callbacks.quantization import Quantization
from callbacks.rep_optimizer import RepOptimizer
from callbacks.reparam_fusion import ReparamFusion
from callbacks.resrep import ResRepPruning
from callbacks.spatial_gradient_scaling import SpatialGradientScaling
from callbacks.structural_reparam import StructuralReparam

__all__ = [
    "CurationInTraining",
    "FastClip",
    "GlobalSparseMomentum",
    "KNNProbe",
    "LinearProbe",
    "Quantization",
    "ReparamFusion",
    "RepOptimizer",
    "ResRepPruning",
    "SpatialGradientScaling",
    "StructuralReparam",
]
