"""The official downloads the preparation scripts read, and where they are unpacked."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Download:
    file_name: str
    url: str
    unpack_into: str  # folder relative to $DETECTRON2_DATASETS ("" = the root itself)

    def hint(self, root: str) -> str:
        """"download X (URL) and unpack it into ROOT/..." for error messages."""
        return f"download {self.file_name} ({self.url}) and unpack it into {os.path.join(root, self.unpack_into, '')}"


COCO_STUFFTHINGMAPS = Download(
    "stuffthingmaps_trainval2017.zip",
    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
    os.path.join("coco", "stuffthingmaps"),
)
VOC2012 = Download(
    "VOCtrainval_11-May-2012.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", ""
)
VOC2010 = Download(
    "VOCtrainval_03-May-2010.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar", ""
)
PASCAL_CONTEXT = Download(
    "trainval.tar.gz",
    "https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
    os.path.join("VOCdevkit", "VOC2010"),
)
CITYSCAPES_GTFINE = Download(
    "gtFine_trainvaltest.zip", "https://www.cityscapes-dataset.com/file-handling/?packageID=1 (login)", "cityscapes"
)
ADE20K = Download("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", "")
ADE20K_FULL = Download(
    "ADE20K_2021_17_01.zip", "https://groups.csail.mit.edu/vision/datasets/ADE20K/ (registration)", ""
)
