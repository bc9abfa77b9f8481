"""The command lines of ``datasets/prepare_*.py``: one ``prepare_<benchmark>(argv)`` each.

Each parses its arguments (the shared ``--root``, ``--workers``, ``--force`` of
:func:`.plumbing.preparation_parser` plus its own), checks the bundled class list where the
mapping depends on it, and converts; a user error ends the run with one line and status 2.
The scripts in ``datasets/`` only call these; their docstrings describe the input and output files.
"""

import os
from typing import Optional, Sequence

from clearclip_d2.constants import class_names_file
from clearclip_d2.data.preparation import converters, plumbing
from clearclip_d2.data.preparation import label_maps as maps
from clearclip_d2.data.vocabulary import load_vocabulary_file
from clearclip_d2.utils.cli import exit_on_user_error

Argv = Optional[Sequence[str]]


def bundled_class_names(stem: str) -> list:
    """The class names of ``clearclip_d2/resources/class_names/<stem>.txt`` (first synonym each)."""
    return load_vocabulary_file(class_names_file(stem)).class_names


def check_coco_stuff_class_list(class_names: Sequence[str]) -> None:
    """Check the COCO-Stuff mapping against a class list: 171 names, anchors in place."""
    maps.check_class_anchors(class_names, maps.COCO_STUFF_NUM_CLASSES, maps.COCO_STUFF_ANCHORS, "COCO-Stuff")


def prepare_ade20k(argv: Argv = None) -> None:
    """ADEChallengeData2016 annotations -> the 0..149 label maps of ``ade20k_sem_seg_val``."""
    program = "prepare_ade20k.py"
    parser = plumbing.preparation_parser(
        program, "Make the 0..149 label maps of ade20k_sem_seg_val from ADEChallengeData2016.", "ADEChallengeData2016/",
        ("training", "validation"), ["validation"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        plumbing.convert_splits(args, converters.ade20k_tasks, converters.ADE20K_CONVERSION, converters.ade20k_output_dir)


def prepare_ade20k_full(argv: Argv = None) -> None:
    """ADE20K_2021_17_01 -> the images and uint16 label maps of ``ade20k_full_sem_seg_val``."""
    program = "prepare_ade20k_full.py"
    parser = plumbing.preparation_parser(
        program, "Make the images and 847-class uint16 label maps of ade20k_full_sem_seg_val.", "ADE20K_2021_17_01/",
        ("training", "validation"), ["validation"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        converters.check_ade20k_full_class_list()
        plumbing.convert_splits(args, converters.ade20k_full_tasks, converters.convert_ade20k_full,
                                lambda root, split: os.path.join(root, converters.ADE_FULL_DIR, "*_detectron2", split))


def prepare_cityscapes(argv: Argv = None) -> None:
    """Cityscapes gtFine labelIds -> the labelTrainIds maps of ``cityscapes_fine_sem_seg_val``."""
    program = "prepare_cityscapes.py"
    parser = plumbing.preparation_parser(
        program, "Make Cityscapes' labelTrainIds maps (0..18, 255 = ignore) from gtFine labelIds.", "cityscapes/gtFine/",
        ("train", "val"), ["val"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        maps.check_class_anchors(bundled_class_names("city_scapes"), len(maps.CITYSCAPES_TRAIN_LABELS),
                                 maps.cityscapes_anchors(), "Cityscapes")
        plumbing.convert_splits(args, converters.cityscapes_tasks, converters.CITYSCAPES_CONVERSION,
                                converters.cityscapes_gt_dir)


def prepare_coco_object(argv: Argv = None) -> None:
    """COCO-Stuff stuffthingmaps -> the label maps of ``coco_2017_val_object_sem_seg``."""
    program = "prepare_coco_object.py"
    parser = plumbing.preparation_parser(
        program,
        "Make COCO-Object label maps (0 = background, 1..80 things) of coco_2017_val_object_sem_seg "
        "from COCO-Stuff stuffthingmaps.",
        "coco/stuffthingmaps/", ("train2017", "val2017"), ["val2017"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        maps.check_class_anchors(bundled_class_names("coco_object"), maps.COCO_NUM_THINGS + 1,
                                 maps.COCO_OBJECT_ANCHORS, "COCO-Object")
        converters.convert_coco(args, os.path.join("coco", "objectmaps_detectron2"), maps.coco_object_lut())


def prepare_coco_stuff(argv: Argv = None) -> None:
    """COCO-Stuff stuffthingmaps -> the 171-class label maps of ``coco_2017_{train,val}_stuff_sem_seg``."""
    program = "prepare_coco_stuff.py"
    splits = ("train2017", "val2017")
    parser = plumbing.preparation_parser(
        program,
        "Convert COCO-Stuff stuffthingmaps (ids 0..181) to the 171 contiguous classes "
        "(0..170, 255 = ignore) of coco_2017_{train,val}_stuff_sem_seg.",
        "coco/stuffthingmaps/", splits, splits,
    )  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        check_coco_stuff_class_list(bundled_class_names("coco_stuff"))
        converters.convert_coco(args, os.path.join("coco", "stuffthingmaps_detectron2"), maps.coco_stuff_lut())


def prepare_pascal_context(argv: Argv = None) -> None:
    """PASCAL-Context trainval .mat files -> the label maps of ``pascal_context_{59,60,459}_val``."""
    program = "prepare_pascal_context.py"
    parser = plumbing.preparation_parser(
        program,
        "Make the label maps of pascal_context_59_val, pascal_context_60_val and pascal_context_459_val "
        "from PASCAL-Context's trainval .mat files.",
        "VOCdevkit/VOC2010/",
    )
    variants = tuple(converters.CONTEXT_VARIANTS)
    plumbing.add_list_option(parser, "--variants", variants, variants, "class sets to make")
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        subset_ids = converters.context59_subset_ids(args.root)
        ids, without_label = converters.context_val_ids(args.root)
        if without_label:
            print(f"skipping {len(without_label)} val images without a trainval/<id>.mat: "
                  f"{', '.join(without_label[:5])}{', ...' if len(without_label) > 5 else ''}", flush=True)
        destinations = ", ".join(converters.context_output_dirs(args.root, args.variants))
        plumbing.convert_and_report("val", converters.context_tasks(args.root, ids, args.variants),
                                    converters.ContextConversion(args.variants, subset_ids), destinations, args)
        converters.write_context_image_list(args.root, ids, args.force)


def prepare_voc(argv: Argv = None) -> None:
    """VOC2012 SegmentationClass maps -> the label maps of ``voc_2012_val_20`` and ``voc_2012_val_21``."""
    program = "prepare_voc.py"
    parser = plumbing.preparation_parser(
        program,
        "Make the label maps of voc_2012_val_20 (no background) and voc_2012_val_21 (with background) "
        "from VOC2012's SegmentationClass maps.",
        "VOCdevkit/VOC2012/",
    )
    variants = tuple(dict(converters.VOC_OUTPUTS))
    plumbing.add_list_option(parser, "--variants", variants, variants, "label sets to make")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="image list (default: val)")
    args = parser.parse_args(argv)
    with exit_on_user_error(program):
        destinations = ", ".join(converters.voc_output_dirs(args.root, args.split, args.variants))
        plumbing.convert_and_report(args.split, converters.voc_tasks(args.root, args.split, args.variants),
                                    converters.voc_conversion(args.variants), destinations, args)


# Script name (``datasets/<name>.py``) -> its command line.
PREPARE_COMMANDS = {
    "prepare_ade20k": prepare_ade20k,
    "prepare_ade20k_full": prepare_ade20k_full,
    "prepare_cityscapes": prepare_cityscapes,
    "prepare_coco_object": prepare_coco_object,
    "prepare_coco_stuff": prepare_coco_stuff,
    "prepare_pascal_context": prepare_pascal_context,
    "prepare_voc": prepare_voc,
}
