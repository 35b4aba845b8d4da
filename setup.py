"""lrjax: latent-reasoning RL for LLMs on one pure-functional JAX engine."""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="lrjax",
    version="0.1.0",
    description="Latent-reasoning reinforcement learning (HRPO, LEPO, Latent-GRPO, LatR, DLR) in JAX/Flax",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # configs/ (the method configs, `--config=configs/<m>.py`) ships as the top-level
    # package `configs`, so an installed lrjax resolves them from any directory.
    packages=setuptools.find_packages(include=["lrjax", "lrjax.*", "configs"]),
    # jax / jaxlib 0.10 and flax 0.12 require Python >= 3.11
    python_requires=">=3.11",
    install_requires=REQUIREMENTS,
    extras_require={
        # torch is the numerical reference in tests only; pinned so pip never
        # pulls a multi-GB CUDA build. pytest-xdist spreads the test files over
        # the cores (-n 2). nbclient/nbformat/ipykernel execute the Colab
        # notebook (launch/colab_tpu.ipynb) on the CPU.
        "test": ["pytest>=8", "pytest-xdist>=3.8", "hypothesis>=6", "torch==2.13.0",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"],
        # benchmarks/grpo_step.py's peer: TRL's GRPOTrainer (torch pinned as above)
        "benchmarks": ["torch==2.13.0", "trl==1.16.0", "accelerate>=1.0"],
    },
)
