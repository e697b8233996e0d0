"""placeid's inference core and offline edge package: decode and preprocess photos, run the TFLite model of
a bundle, apply its unknown-place rule and describe the place. Needs only numpy, Pillow and a TFLite runtime
(never TensorFlow when a runtime is installed)."""

from placeid_edge.bundle import Bundle, Prediction
from placeid_edge.errors import PlaceidError

__version__ = "0.1.0"
__all__ = ["Bundle", "Prediction", "PlaceidError", "__version__"]
