"""Generic (non-OOF) benchmark models, each as a NumPy and a PyTorch likelihood pair."""

from gradfit.models import gaussians2d

__all__ = ["gaussians2d"]
