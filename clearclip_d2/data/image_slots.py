"""Shared-memory slots through which the test loader's worker processes hand images to the
process reading the loader.

PyTorch hands a tensor from a worker to the reader in a shared-memory file of its own: the
reader receives its file descriptor (a socket connection to the worker and an authentication
challenge per tensor), maps it, takes a page fault per 4 KiB when it first reads it and unmaps
it when it is freed. On a 2-core CPU that is ~2 ms of the reading process's main thread per
448 x 597 image (docs/PERFORMANCE.md, "Evaluation loop"), a tenth of a GPU's model time.

:class:`ImageSlots` is one anonymous shared mapping made by the reader before the workers start
(forked workers inherit it): a worker copies its mapped image into a free slot and sends only
the slot and the shape (:class:`SlotImage`); unpickling that in the reader copies the image out
into an ordinary tensor and frees the slot. Pages are allocated when first written; there is no
file, so nothing is left behind when the processes are killed (the mapping ends with the last
of them). An image goes the usual way when it does not fit in a slot or is not uint8, when every
slot is taken, when the loader is read without workers, and when the workers are not forked
(``spawn``/``forkserver``: the slots are not pickled, so those workers have none).
"""

import contextlib
import logging
import mmap
import multiprocessing
import os
import uuid
import weakref
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.utils.data

from ..utils.errors import ClearCLIPError

logger = logging.getLogger(__name__)
_SLOTS_BY_ID: "weakref.WeakValueDictionary[str, ImageSlots]" = weakref.WeakValueDictionary()
FREE, TAKEN = 0, 1
FLAGS_BYTES = 64  # the slots start on a cache line of their own


class ImageSlots:
    """``num_slots`` slots of ``slot_bytes`` bytes each in one anonymous shared mapping.

    Workers :meth:`put` (claim the lowest free slot, copy the image in), the reader
    :meth:`take` (copy it out, free the slot). The slot flags change under ``lock``, whose
    acquire and release also order the reader's copy before the slot's reuse. It is held for
    microseconds; waiting for it longer than ``lock_timeout_s`` means a worker was killed
    while holding it, which stops the evaluation with one line instead of hanging.
    """

    lock_timeout_s = 10.0

    def __init__(self, num_slots: int, slot_bytes: int):
        if num_slots < 1 or num_slots > FLAGS_BYTES or slot_bytes < 1:
            raise ValueError(f"ImageSlots needs 1..{FLAGS_BYTES} slots of at least 1 byte, got {num_slots} x {slot_bytes}")
        self.id = uuid.uuid4().hex
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        self._mapping: Optional[mmap.mmap] = mmap.mmap(-1, FLAGS_BYTES + num_slots * slot_bytes)
        memory = torch.frombuffer(self._mapping, dtype=torch.uint8)
        self._flags = memory[:num_slots]
        self._slots = memory[FLAGS_BYTES:].view(num_slots, slot_bytes)
        self.lock = multiprocessing.get_context("fork").Lock()
        _SLOTS_BY_ID[self.id] = self

    @property
    def usable(self) -> bool:
        """Whether this process has the mapping (the reader, and workers forked from it)."""
        return self._mapping is not None

    def __getstate__(self) -> Dict:
        # Pickled for a worker that is not forked: it gets no slots (a copy would not be shared).
        return {"id": self.id, "num_slots": self.num_slots, "slot_bytes": self.slot_bytes}

    def __setstate__(self, state: Dict) -> None:
        self.__dict__.update(state, _mapping=None, _flags=None, _slots=None, lock=None)

    @contextlib.contextmanager
    def _flags_locked(self) -> Iterator[None]:
        if not self.lock.acquire(timeout=self.lock_timeout_s):
            raise ClearCLIPError(
                f"the test loader's image slots stayed locked for {self.lock_timeout_s:g} s: a data-loader worker was "
                "killed while holding their lock; run the evaluation again (--resume-eval keeps the images done)"
            )
        try:
            yield
        finally:
            self.lock.release()

    def free_count(self) -> int:
        with self._flags_locked():
            return int((self._flags == FREE).sum())

    def put(self, image: torch.Tensor) -> Optional["SlotImage"]:
        """Copy ``image`` into a free slot and return its handle, or None (no slots in this
        process, none free, or an image that is not a uint8 CPU tensor of at most ``slot_bytes``)."""
        if not self.usable or image.dtype != torch.uint8 or image.device.type != "cpu" or image.numel() > self.slot_bytes:
            return None
        with self._flags_locked():
            free = torch.nonzero(self._flags == FREE)
            if len(free) == 0:
                return None
            slot = int(free[0])
            self._flags[slot] = TAKEN
        self._slots[slot, : image.numel()].copy_(image.reshape(-1))
        return SlotImage(self.id, slot, tuple(image.shape))

    def take(self, slot: int, shape: Tuple[int, ...]) -> torch.Tensor:
        """The image in ``slot`` (of ``shape``) as a new tensor; the slot is free again."""
        image = torch.empty(shape, dtype=torch.uint8)
        image.view(-1).copy_(self._slots[slot, : image.numel()])
        with self._flags_locked():
            self._flags[slot] = FREE
        return image


class SlotImage:
    """A worker's image in a slot of :class:`ImageSlots`: pickled as (slots, slot, shape), and
    unpickled in the reader as the image itself (a tensor)."""

    def __init__(self, slots_id: str, slot: int, shape: Tuple[int, ...]):
        self.slots_id, self.slot, self.shape = slots_id, slot, shape

    def __reduce__(self):
        return _take_from_slot, (self.slots_id, self.slot, self.shape)


def _take_from_slot(slots_id: str, slot: int, shape: Sequence[int]) -> torch.Tensor:
    slots = _SLOTS_BY_ID.get(slots_id)
    if slots is None or not slots.usable:
        raise ClearCLIPError(
            "an image handed over in a test loader's shared-memory slot reached a process without those slots; "
            "read the loader in the process that built it"
        )
    return slots.take(slot, tuple(shape))


class SlotHandingMapper:
    """``mapper`` whose ``"image"`` goes to the reader through ``slots`` when it runs in a
    DataLoader worker process (in the reading process itself it is returned as it is)."""

    def __init__(self, mapper: Callable[[Dict], Dict], slots: ImageSlots):
        self.mapper = mapper
        self.slots = slots

    def __call__(self, dataset_dict: Dict) -> Dict:
        mapped = self.mapper(dataset_dict)
        if torch.utils.data.get_worker_info() is not None and isinstance(mapped.get("image"), torch.Tensor):
            handle = self.slots.put(mapped["image"])
            if handle is not None:
                mapped["image"] = handle
        return mapped


def slots_for_test_loader(num_workers: int, max_image_bytes: int, prefetch_factor: int = 2) -> Optional[ImageSlots]:
    """Slots for a test loader with ``num_workers`` workers (each holding up to
    ``prefetch_factor`` images, PyTorch's default 2, plus the one it maps) and images of at most
    ``max_image_bytes``; None without workers or fork, or when the system refuses the mapping
    (the images then go PyTorch's way)."""
    if num_workers < 1 or max_image_bytes < 1 or not hasattr(os, "fork"):
        return None
    num_slots = min(FLAGS_BYTES, num_workers * (prefetch_factor + 1))
    try:
        return ImageSlots(num_slots, max_image_bytes)
    except OSError as e:  # e.g. strict overcommit and a large INPUT.MAX_SIZE_TEST
        logger.warning(f"No shared-memory image slots ({num_slots} x {max_image_bytes} bytes: {e}); "
                       "the test loader hands images over the usual way")
        return None
