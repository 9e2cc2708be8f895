"""Install fastgen; ``kernels/`` is installed as ``fastgen.kernels``.

Works without CUDA: the native kernels in ``csrc/`` are compiled at first use on a GPU
machine (``fastgen/_native.py``), never at install time, so there is nothing to build here.
"""
from setuptools import find_packages, setup

setup(
    name="fastgen",
    version="0.1.0",
    description="Hand-written GPU kernels for deep generative models, as drop-in PyTorch layers and samplers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastgen", "fastgen.*"]) + ["fastgen.kernels"],
    package_dir={"fastgen.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy",
        # the lowest Triton every kernel is known to compile with (the GPU image's): every kernel
        # at every configuration compiles under 3.6.0 (`fastgen compile-gate`, run by .ci/run)
        "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "tqdm",
        "scikit-learn",   # the bundled 8x8 digits of `fastgen demo`
        "pillow",         # samples.png
        "safetensors",    # fastgen train's checkpoint weights
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "viz": ["matplotlib", "pillow"],
        "cuda": ["cupy-cuda12x"],
        "bench": ["pytest-benchmark"],
    },
    entry_points={"console_scripts": ["fastgen = fastgen.cli:main"]},
)
