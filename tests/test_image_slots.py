"""The test loader's workers hand images over through shared-memory slots (clearclip_d2/data/image_slots.py):
the same images, in the same order, as PyTorch's own hand-over, whatever does not fit or finds no slot."""

import pickle

import pytest
import torch
import torch.utils.data

from clearclip_d2.data.image_slots import ImageSlots, SlotHandingMapper, SlotImage, slots_for_test_loader
from clearclip_d2.utils.errors import ClearCLIPError

SLOT_BYTES = 3 * 40 * 40
# (shape, dtype) per item: most fit a slot; one is too big, one is not uint8 (both go PyTorch's way)
ITEMS = [((3, 20 + i % 7, 30 - i % 5), torch.uint8) for i in range(30)] + [((3, 64, 64), torch.uint8), ((3, 10, 10), torch.float32)]


def image_of(index):
    shape, dtype = ITEMS[index]
    generator = torch.Generator().manual_seed(index)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.int64).to(dtype)


def map_item(index):
    return {"index": index, "image": image_of(index)}


def fits(index):
    shape, dtype = ITEMS[index]
    return dtype == torch.uint8 and torch.Size(shape).numel() <= SLOT_BYTES


class CountingSlots(ImageSlots):
    """Counts the images taken out of the slots in the reading process."""

    taken = 0

    def take(self, slot, shape):
        self.taken += 1
        return super().take(slot, shape)


def read_all(slots, num_workers, **loader_args):
    mapper = SlotHandingMapper(map_item, slots)
    loader = torch.utils.data.DataLoader(
        list(range(len(ITEMS))), batch_size=None, num_workers=num_workers, collate_fn=mapper, **loader_args
    )
    return list(loader)


def assert_same_images(items):
    assert [item["index"] for item in items] == list(range(len(ITEMS)))
    for item in items:
        image = item["image"]
        assert isinstance(image, torch.Tensor)
        assert image.dtype == ITEMS[item["index"]][1] and torch.equal(image, image_of(item["index"])), item["index"]


def test_forked_workers_hand_the_images_over_through_the_slots():
    slots = CountingSlots(num_slots=6, slot_bytes=SLOT_BYTES)
    items = read_all(slots, num_workers=2, multiprocessing_context="fork")
    assert_same_images(items)
    # PyTorch's default prefetching (2 per worker) never takes more than 6 slots: every image that fits used one
    assert slots.taken == sum(fits(index) for index in range(len(ITEMS))) and slots.taken < len(ITEMS)
    assert slots.free_count() == 6  # every slot is free again
    assert_same_images(read_all(slots, num_workers=2, multiprocessing_context="fork"))  # the loader read again


def test_images_that_find_no_free_slot_go_pytorchs_way():
    slots = CountingSlots(num_slots=1, slot_bytes=SLOT_BYTES)
    assert_same_images(read_all(slots, num_workers=2, multiprocessing_context="fork"))
    assert slots.taken >= 1 and slots.free_count() == 1


def test_without_workers_the_images_stay_tensors():
    slots = CountingSlots(num_slots=2, slot_bytes=SLOT_BYTES)
    assert_same_images(read_all(slots, num_workers=0))
    assert slots.taken == 0 and slots_for_test_loader(0, SLOT_BYTES) is None


def test_workers_that_are_not_forked_get_no_slots():
    """A spawned worker gets the slots pickled: a copy would not be shared, so it has none."""
    slots = CountingSlots(num_slots=2, slot_bytes=SLOT_BYTES)
    copy = pickle.loads(pickle.dumps(slots))
    assert not copy.usable and copy.put(image_of(0)) is None
    assert_same_images(read_all(slots, num_workers=1, multiprocessing_context="spawn"))
    assert slots.taken == 0


def test_a_slot_image_reaching_a_process_without_its_slots_is_refused_in_one_line():
    with pytest.raises(ClearCLIPError, match="reached a process without those slots; read the loader in the process that built it"):
        pickle.loads(pickle.dumps(SlotImage("no-such-slots", 0, (3, 2, 2))))


def test_slot_counts_follow_the_workers(monkeypatch, caplog):
    from conftest import capturing_warnings

    slots = slots_for_test_loader(num_workers=4, max_image_bytes=100)
    assert slots.num_slots == 12 and slots.slot_bytes == 100 and slots.free_count() == 12
    assert slots_for_test_loader(num_workers=40, max_image_bytes=100).num_slots == 64
    assert slots_for_test_loader(num_workers=2, max_image_bytes=0) is None
    with pytest.raises(ValueError, match="ImageSlots needs 1..64 slots"):
        ImageSlots(0, 10)

    def refuse(*args):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("mmap.mmap", refuse)  # a system that refuses the mapping: PyTorch's way, with a warning
    with capturing_warnings(caplog, "clearclip_d2"):
        assert slots_for_test_loader(num_workers=2, max_image_bytes=100) is None
    assert "No shared-memory image slots (6 x 100 bytes: [Errno 12] Cannot allocate memory)" in caplog.text


def test_the_trainers_test_loader_gives_the_mappers_images(tiny_model_files, tmp_path, monkeypatch):
    """Trainer.build_test_loader with workers hands every image over through its slots, and
    gives what the mapper gives in this process."""
    from conftest import tiny_cfg
    from synthetic_coco import write_coco_stuff_layout

    from clearclip_d2.data import ClearCLIPDatasetMapper
    from clearclip_d2.data.dataset_mapper import max_mapped_image_bytes
    from clearclip_d2.engine.trainer import Trainer

    root = write_coco_stuff_layout(tmp_path, [(60, 80), (90, 50), (64, 64)], num_labels=5, block=8)
    images = sorted((root / "coco" / "val2017").iterdir())
    dicts = [{"file_name": str(path), "sem_seg_file_name": str(path).replace(".jpg", ".png")} for path in images]
    cfg = tiny_cfg(tiny_model_files, **{"DATALOADER.NUM_WORKERS": 2, "INPUT.MIN_SIZE_TEST": 32, "INPUT.MAX_SIZE_TEST": 48})
    assert max_mapped_image_bytes(cfg) == 3 * 33 * 49
    expected = [ClearCLIPDatasetMapper(cfg, False)(dict(d)) for d in dicts]
    taken, take = [], ImageSlots.take

    def counting_take(slots, slot, shape):  # in this process, the reader
        taken.append(tuple(shape))
        return take(slots, slot, shape)

    monkeypatch.setattr(ImageSlots, "take", counting_take)
    batches = list(Trainer.build_test_loader(cfg, "unused", dicts))
    # every image came through a slot (taken as it arrives, from either worker)
    assert sorted(taken) == sorted(tuple(want["image"].shape) for want in expected)
    assert [len(batch) for batch in batches] == [1, 1, 1]
    for (item,), want in zip(batches, expected):
        assert item["file_name"] == want["file_name"] and (item["height"], item["width"]) == (want["height"], want["width"])
        assert isinstance(item["image"], torch.Tensor) and torch.equal(item["image"], want["image"])


def hold_the_lock_and_die(slots):
    import os
    import signal

    slots.lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_holding_the_lock_stops_the_reader_in_one_line_instead_of_hanging():
    import multiprocessing

    slots = ImageSlots(num_slots=2, slot_bytes=SLOT_BYTES)
    slots.lock_timeout_s = 0.2
    handle = slots.put(image_of(0))
    worker = multiprocessing.get_context("fork").Process(target=hold_the_lock_and_die, args=(slots,))
    worker.start()
    worker.join()
    with pytest.raises(ClearCLIPError, match="image slots stayed locked for 0.2 s: a data-loader worker was killed while holding"):
        slots.take(handle.slot, handle.shape)
    with pytest.raises(ClearCLIPError, match="stayed locked"):
        slots.put(image_of(1))
