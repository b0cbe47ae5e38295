"""rvc-ray: distributed training and serving of RVC voice models on Ray.

Importing this package has no side effects and imports neither torch nor ray.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
