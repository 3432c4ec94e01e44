"""Cross-cutting training techniques as Lightning callbacks, usable on any LightningModule."""

from litzoo.callbacks.adversarial_robustness import AdversarialRobustness
from litzoo.callbacks.attribution_writer import AttributionWriter
from litzoo.callbacks.curation_in_training import CurationInTraining
from litzoo.callbacks.fastclip import FastClip
from litzoo.callbacks.gsm import GlobalSparseMomentum
from litzoo.callbacks.layer_probe import LayerProbe
from litzoo.callbacks.probe import KNNProbe, LinearProbe
from litzoo.callbacks.progressive_resolution import ProgressiveResolution
from litzoo.callbacks.quantization import Quantization
from litzoo.callbacks.rep_optimizer import RepOptimizer
from litzoo.callbacks.reparam_fusion import ReparamFusion
from litzoo.callbacks.resrep import ResRepPruning
from litzoo.callbacks.spatial_gradient_scaling import SpatialGradientScaling
from litzoo.callbacks.structural_reparam import StructuralReparam

__all__ = [
    "AdversarialRobustness",
    "AttributionWriter",
    "CurationInTraining",
    "FastClip",
    "GlobalSparseMomentum",
    "KNNProbe",
    "LayerProbe",
    "LinearProbe",
    "ProgressiveResolution",
    "Quantization",
    "ReparamFusion",
    "RepOptimizer",
    "ResRepPruning",
    "SpatialGradientScaling",
    "StructuralReparam",
]
