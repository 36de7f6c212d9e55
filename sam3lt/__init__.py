"""sam3lt: fast SAM3-LiteText inference (compact model + Triton/CUDA kernels)."""
from .ops import set_backend, use_backend, get_backend

__version__ = "0.1.0"
__all__ = ["set_backend", "use_backend", "get_backend", "__version__"]
