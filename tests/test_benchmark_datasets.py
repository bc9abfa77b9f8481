"""The registered benchmarks: metadata, class lists, configs, and the checks of the loader."""

import collections
import os

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT

CLASS_NAMES_DIR = os.path.join(REPO_ROOT, "clearclip_d2", "resources", "class_names")
# dataset -> (classes, ignore label, reference background threshold (constants.REFERENCE_PROB_THRESHOLDS), class-names file)
EXPECTED = {
    "voc_2012_val_20": (20, 255, 0.0, "voc20"),
    "voc_2012_val_21": (21, 255, 0.5, "voc21"),
    "pascal_context_59_val": (59, 255, 0.0, "context59"),
    "pascal_context_60_val": (60, 255, 0.15, "context60"),
    "coco_2017_val_object_sem_seg": (81, 255, 0.4, "coco_object"),
    "coco_2017_val_stuff_sem_seg": (171, 255, 0.0, "coco_stuff"),
    "cityscapes_fine_sem_seg_val": (19, 255, 0.0, "city_scapes"),
    "ade20k_sem_seg_val": (150, 255, 0.0, "ade20k"),
    "ade20k_full_sem_seg_val": (847, 65535, 0.0, "ade20k_full"),
    "pascal_context_459_val": (459, 65535, 0.0, "context459"),
}


def read_lines(stem):
    with open(os.path.join(CLASS_NAMES_DIR, stem + ".txt")) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_benchmark_metadata(dataset):
    import clearclip_d2  # noqa: F401
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from clearclip_d2.modeling.meta_arch import prob_threshold_of_dataset, vocabulary_of_dataset

    num_classes, ignore, threshold, stem = EXPECTED[dataset]
    assert dataset in DatasetCatalog.list()
    meta = MetadataCatalog.get(dataset)
    assert len(meta.stuff_classes) == num_classes and meta.ignore_label == ignore
    assert meta.evaluator_type in ("sem_seg", "cityscapes_sem_seg")
    assert prob_threshold_of_dataset(dataset) == threshold
    assert meta.prepare_command.startswith("python datasets/prepare_")
    assert os.path.isfile(os.path.join(REPO_ROOT, meta.prepare_command.split()[-1]))
    vocabulary = vocabulary_of_dataset(dataset)
    assert [", ".join(c) for c in vocabulary.classes] == [", ".join(n.strip() for n in line.split(",")) for line in read_lines(stem)]


def test_detectron2_registrations_are_adopted_not_replaced():
    """Detectron2's own ade20k_sem_seg_val / cityscapes_fine_sem_seg_val keep their metadata;
    the reference class lists come as clearclip_classes."""
    import clearclip_d2  # noqa: F401
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    ade = MetadataCatalog.get("ade20k_sem_seg_val")
    assert ade.stuff_classes == ADE20K_SEM_SEG_CATEGORIES
    assert ade.clearclip_classes == read_lines("ade20k")
    city = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert city.evaluator_type == "cityscapes_sem_seg" and city.stuff_classes[6] == "traffic light"
    assert city.clearclip_classes[6] == "trafficlight"
    assert os.path.normpath(city.sem_seg_root) == os.path.normpath(city.gt_dir)
    assert os.path.normpath(city.image_root) == os.path.normpath(city.image_dir)


# ---------------------------------------------------------------------------- the loader's checks
def write_files(folder, names, array=None):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((4, 5), np.uint8) if array is None else array).save(os.path.join(folder, name))


@pytest.fixture
def register(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []

    def register_dataset(name, **kwargs):
        from clearclip_d2.data.datasets import register_sem_seg_dataset

        names.append(name)
        register_sem_seg_dataset(name, stuff_classes=["a", "b"], prepare_command="python datasets/prepare_x.py", **kwargs)
        return lambda: DatasetCatalog.get(name)

    yield register_dataset
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_loader_pairs_images_and_labels(tmp_path, register):
    write_files(tmp_path / "img", ["a.jpg", "b.jpg"])
    write_files(tmp_path / "lbl", ["a.png", "b.png"])
    (tmp_path / "lbl" / "notes.txt").write_text("not a label map")
    records = register("t_pairs", image_root=str(tmp_path / "img"), sem_seg_root=str(tmp_path / "lbl"))()
    assert [(os.path.basename(r["file_name"]), os.path.basename(r["sem_seg_file_name"])) for r in records] == [
        ("a.jpg", "a.png"), ("b.jpg", "b.png")]


def test_half_prepared_dataset_names_missing_labels_and_the_script(tmp_path, register):
    from clearclip_d2.data.datasets import check_dataset_prepared
    from clearclip_d2.utils.errors import ClearCLIPError

    write_files(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    write_files(tmp_path / "lbl", ["a.png"])
    register("t_half", image_root=str(tmp_path / "img"), sem_seg_root=str(tmp_path / "lbl"))
    with pytest.raises(ClearCLIPError, match=r"2 of the 3 images have no label map .*b\.png, c\.png.*prepare_x\.py"):
        check_dataset_prepared("t_half")


def test_label_without_image_is_named(tmp_path, register):
    from clearclip_d2.utils.errors import ClearCLIPError

    write_files(tmp_path / "img", ["a.jpg"])
    write_files(tmp_path / "lbl", ["a.png", "z.png"])
    load = register("t_orphan", image_root=str(tmp_path / "img"), sem_seg_root=str(tmp_path / "lbl"))
    with pytest.raises(ClearCLIPError, match=r"1 label maps in .* have no image .*z\.png"):
        load()


def test_image_list_restricts_and_requires_listed_files(tmp_path, register):
    from clearclip_d2.utils.errors import ClearCLIPError

    write_files(tmp_path / "img", ["a.jpg", "b.jpg", "train.jpg"])
    write_files(tmp_path / "lbl", ["a.png", "b.png"])
    (tmp_path / "val.txt").write_text("a\nb\n")
    load = register("t_list", image_root=str(tmp_path / "img"), sem_seg_root=str(tmp_path / "lbl"),
                    image_list=str(tmp_path / "val.txt"))
    assert [os.path.basename(r["file_name"]) for r in load()] == ["a.jpg", "b.jpg"]
    (tmp_path / "val.txt").write_text("a\nb\nmissing\n")
    with pytest.raises(ClearCLIPError, match=r"1 of the 3 images listed in .*val\.txt are not in .*missing\.jpg"):
        load()
    os.remove(tmp_path / "val.txt")
    with pytest.raises(ClearCLIPError, match=r"image list .*val\.txt does not exist; run: python datasets/prepare_x\.py"):
        load()


def test_subfolders_and_suffixes(tmp_path, register):
    write_files(tmp_path / "img" / "bonn", ["bonn_1_leftImg8bit.png"])
    write_files(tmp_path / "gt" / "bonn", ["bonn_1_gtFine_labelTrainIds.png", "bonn_1_gtFine_labelIds.png"])
    load = register("t_sub", image_root=str(tmp_path / "img"), sem_seg_root=str(tmp_path / "gt"),
                    image_ext="_leftImg8bit.png", gt_ext="_gtFine_labelTrainIds.png", subfolders=True)
    (record,) = load()
    assert record["sem_seg_file_name"].endswith(os.path.join("bonn", "bonn_1_gtFine_labelTrainIds.png"))


def test_other_projects_registration_with_other_folders_is_left_alone(tmp_path, register):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register("t_foreign", lambda: [{"file_name": "x"}])
    MetadataCatalog.get("t_foreign").set(stuff_classes=["a", "b"], image_root="/elsewhere", sem_seg_root="/elsewhere")
    register("t_foreign", image_root=str(tmp_path), sem_seg_root=str(tmp_path))
    assert DatasetCatalog.get("t_foreign") == [{"file_name": "x"}]
    assert MetadataCatalog.get("t_foreign").get("clearclip_classes") is None


# ---------------------------------------------------------------------------- class lists
def test_large_vocabulary_class_lists():
    from clearclip_d2.data.class_lists import ade20k_full_categories, unique_synonyms
    from clearclip_d2.data.vocabulary import load_vocabulary_file

    categories = ade20k_full_categories()
    assert len(categories) == 847 and len({c.ade_id for c in categories}) == 847
    assert (categories[0].ade_id, categories[0].name) == (2978, "wall")
    assert (categories[846].ade_id, categories[846].name) == (3148, "adding machine, totalizer, totaliser")
    assert read_lines("ade20k_full") == unique_synonyms([c.name for c in categories])
    assert len(load_vocabulary_file(os.path.join(CLASS_NAMES_DIR, "ade20k_full.txt"))) == 847
    context = read_lines("context459")
    assert len(context) == 459 == len(set(context)) and context[0] == "accordion" and context[-1] == "wool"
    assert len(load_vocabulary_file(os.path.join(CLASS_NAMES_DIR, "context459.txt"))) == 459


def test_unique_synonyms_gives_each_shared_name_to_one_class():
    from clearclip_d2.data.class_lists import unique_synonyms

    entries = ["bag", "bag, handbag, purse", "screen, crt screen", "screen, silver screen", "blind, screen",
               "dog, domestic dog", "andiron, dog"]
    assert unique_synonyms(entries) == ["bag", "handbag, purse", "crt screen", "silver screen", "blind",
                                        "dog, domestic dog", "andiron"]
    names = collections.Counter(n for e in unique_synonyms(entries) for n in e.split(", "))
    assert max(names.values()) == 1
    with pytest.raises(ValueError, match="no name left"):
        unique_synonyms(["pipe", "pipe"])


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("architecture", ["ViT-B-16", "ViT-L-14"])
def test_benchmark_configs(architecture):
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config
    from clearclip_d2.config import check_clearclip_config
    from clearclip_d2.data.benchmarks import BENCHMARKS

    windows = {"cityscapes": (224, 224)}  # the reference's; every other benchmark: 448 / 224
    configured = 0
    for benchmark in BENCHMARKS:
        path = benchmark.config_path(architecture)
        if path is None:
            assert architecture == "ViT-L-14" and benchmark.key in ("voc21", "context60", "coco_object",
                                                                    "ade20k_full", "context459")
            continue
        cfg = get_cfg()
        add_clearclip_config(cfg)
        cfg.merge_from_file(os.path.join(REPO_ROOT, path))
        assert tuple(cfg.DATASETS.TEST) == (benchmark.dataset_name,)
        cc = cfg.MODEL.CLEARCLIP
        assert (cc.SLIDE_CROP, cc.SLIDE_STRIDE) == windows.get(benchmark.key, (448, 224))
        assert cc.PROB_THRESHOLD == -1.0 and cc.CLASS_NAMES_FILE == ""
        assert (cc.MODEL_NAME, cc.PRETRAINED) == (architecture, "openai")
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (448, 2048)
        check_clearclip_config(cfg)
        configured += 1
    assert configured == (10 if architecture == "ViT-B-16" else 5)
