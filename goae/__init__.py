"""goae: GOAE 3D GAN inversion on a pure-PyTorch EG3D.

Importing the package has no side effects; subpackages are imported on demand.
"""
__version__ = "0.1.0"
