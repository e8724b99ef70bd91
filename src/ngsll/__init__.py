"""NGSLL: neural generators of sparse local linear models.

Every prediction is the inner product of a simplified input ``z`` with a sparse, per-sample weight
vector that a neural network generated from the original input ``x``; the weights are the explanation.
The core package is pure PyTorch/NumPy: no MLflow, DVC or TorchServe imports.
"""

from ngsll.errors import ConfigError, DataSourceError, InputError, IntegrityError, NGSLLError
from ngsll.gate import KHotGate, topk_gate
from ngsll.model import DNNClassifier, ModelArgs, NGSLL, NGSLLOutput, build_model

__all__ = [
    "ConfigError",
    "DataSourceError",
    "DNNClassifier",
    "InputError",
    "IntegrityError",
    "KHotGate",
    "ModelArgs",
    "NGSLL",
    "NGSLLError",
    "NGSLLOutput",
    "build_model",
    "topk_gate",
]

__version__ = "0.1.0"
