from setuptools import find_packages, setup

setup(
    name="kd_tf",
    version="0.1.0",
    description="Knowledge distillation toolkit on TensorFlow 2 / Keras 3",
    packages=find_packages(include=["kd_tf", "kd_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.18",
        "tensorboard",
        "tensorflow-datasets>=4.9",
        "keras-tuner[bayesian]>=1.4",  # scipy + scikit-learn for --tuner=bayesian
        "absl-py>=2.1",
        "matplotlib>=3.8",
        "ai-edge-litert>=2.3",  # LiteRT's interpreter for the tflite stage
        "tqdm>=4.60",  # progress bars on a terminal (already a tensorflow-datasets dependency)
    ],
    # pytest-xdist: `make test` runs the suite on 2 workers (README, The two commands).
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5"]},
)
