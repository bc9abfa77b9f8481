"""clearclip_d2: ClearCLIP (ECCV 2024) training-free open-vocabulary semantic segmentation
as a Detectron2 plugin, on top of open_clip.

PyTorch, Detectron2 and OpenCV are not listed in ``install_requires``: install the builds that
fit your machine first (``make install`` does it, see tools/install_env.sh).
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(HERE, "clearclip_d2", "constants.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.M)
    if not match:
        raise RuntimeError("__version__ not found in clearclip_d2/constants.py")
    return match.group(1)


def read_readme() -> str:
    path = os.path.join(HERE, "README.md")
    if not os.path.isfile(path):
        return __doc__
    with open(path, encoding="utf-8") as f:
        return f.read()


setup(
    name="clearclip_d2",
    version=read_version(),
    description="ClearCLIP training-free open-vocabulary semantic segmentation as a Detectron2 plugin",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["clearclip_d2", "clearclip_d2.*"]),
    package_data={"clearclip_d2": ["resources/*.txt", "resources/*.tsv", "resources/class_names/*.txt",
                                  "resources/class_names/*/*.txt", "resources/paper_results/*.tsv"]},
    include_package_data=False,
    zip_safe=False,
    # torch, torchvision, detectron2 and OpenCV come from the user (see the module docstring).
    install_requires=[
        # Tested: 3.3.0 (requirements.txt) and the next major version, 4.2.0.dev0 from its main
        # branch (tests/test_open_clip_next.py); 2.24 is the older floor, not re-tested with these.
        "open_clip_torch>=2.24,<5",
        # numpy 1.x and 2.x both (tested: 1.26.4 and 2.4.6). OpenCV is left out, as Detectron2 leaves
        # it out: its distributions (opencv-python, opencv-python-headless, ...) share the cv2 folder,
        # and requiring one would install it over the user's. `import clearclip_d2` names the fix
        # when cv2 is missing; requirements.txt pins opencv-python-headless for `make install`.
        "numpy>=1.21",
        "Pillow>=9.1",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "safetensors>=0.4",
        "tqdm>4.29",
        "tabulate",
        "termcolor>=1.1",
        "yacs>=0.1.8",
        "matplotlib",
        "pycocotools>=2.0.2",
        "cloudpickle",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "packaging",
    ],
    extras_require={
        "demo": ["scikit-image>=0.19"],
        "test": ["pytest>=7", "scikit-image>=0.19", "scipy"],
        "datasets": ["scipy"],  # datasets/prepare_pascal_context.py reads .mat files
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
