"""sam3lt packaging.

The Triton kernels live in the top-level ``kernels/`` folder of the repository and are installed as
``sam3lt.kernels`` (``package_dir``), so no top-level module called ``kernels`` is ever installed.
The CUDA extension ``sam3lt._C`` (``csrc/``) is added to ``ext_modules`` by ``_cuda_extensions()``;
it is empty until the CUDA-kernel issue lands, so this is a pure-Python install today.
"""
from setuptools import setup


def _cuda_extensions():
    # Place for the CUDAExtension of csrc/ (built with ninja when a CUDA toolkit and a CUDA torch exist).
    return []


ext_modules = _cuda_extensions()
print(f"sam3lt: building {'the CUDA extension sam3lt._C' if ext_modules else 'pure Python (no CUDA extension)'}")

setup(
    name="sam3lt",
    version="0.1.0",
    description="Fast SAM3-LiteText inference: compact model, Triton and CUDA kernels",
    python_requires=">=3.11",
    packages=["sam3lt", "sam3lt.model", "sam3lt.ops", "sam3lt.kernels", "sam3lt.assets"],
    package_dir={"sam3lt.kernels": "kernels"},
    package_data={"sam3lt.assets": ["*.jpg", "*.png", "*.txt", "*.gz", "*.json"]},
    install_requires=[
        "torch>=2.11",
        "torchvision",
        "triton",
        "numpy",
        "safetensors",
        "tokenizers",
        "huggingface_hub",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": ["transformers>=5.17", "pytest", "scikit-image"],
        "hf": ["transformers>=5.17"],
    },
    entry_points={"console_scripts": ["sam3lt=sam3lt.cli:main"]},
    ext_modules=ext_modules,
)
