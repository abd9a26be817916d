"""Turning what users hand to ``log_images`` into validated uint8 ``Image`` records, in two halves.

At the call, on the training thread, ``ImagesSnapshot`` checks shapes and dtypes from metadata only
and takes a private copy of the data on its own device (``clone()``: asynchronous on CUDA, no host
sync), so the caller may change its tensors at once. The conversion to uint8 ``[H, W, C]`` and the
copy to the host happen later, in ``ImagesSnapshot.records()``, on a backend's writer thread:
``images_record`` wraps it in a ``Deferred`` that the first writer to reach it resolves, once for
every backend. A CUDA image therefore never makes the training thread wait for the GPU.

Pixel values follow Composer: it accepts any numeric image (float, int, bool) and hands it to
``wandb.Image``, which in wandb >= 0.20 casts it with ``astype(uint8)``. logbus gives the same pixels
for the same array, with one deliberate difference: a float image whose values all lie in [0, 1] is
scaled to 0..255 (``logbus.kernels.images_to_uint8``, the rounding of the GPU sample pipeline), as
wandb did before 0.20; the cast alone saves it black. Float images beyond [0, 1] (0..255 data) are
cast as wandb does, after clipping to 0..255 (a cast of an out-of-range float is undefined); integer
and bool images are cast exactly as wandb does (bool: 0 and 1).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np
import torch

from logbus.bus import Deferred, LazyFuture
from logbus.files import check_key, check_name
from logbus.records import Image, Images, Mask, Table, _check_step


def _as_tensor(value: Any, argument: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{argument}: expected a numpy array or torch tensor, got {type(value).__name__}")


def to_uint8_images(images: Any, *, channels_last: bool | None = None, **options: Any) -> np.ndarray:
    """``[N, C, H, W]``/``[N, H, W, C]`` (or one 3-D image) floats or uint8 -> uint8 ``[N, H, W, C]``."""
    from logbus.kernels import images_to_uint8

    return images_to_uint8(_as_tensor(images, "images"), channels_last=channels_last, **options).cpu().numpy()


def _as_composer_pixels(tensor: torch.Tensor) -> torch.Tensor:
    """Composer + wandb's pixel values for any numeric image: uint8, or a float in [0, 1] that the
    uint8 conversion scales (see the module docstring)."""
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.is_floating_point():
        if tensor.numel() and bool(((tensor >= 0) & (tensor <= 1)).all()):
            return tensor
        return tensor.float().nan_to_num(0.0).clamp(0, 255).to(torch.uint8)
    if tensor.is_complex():
        raise TypeError(f"images: expected real pixel values, got dtype {tensor.dtype}")
    return tensor.to(torch.uint8)  # ints wrap modulo 256 and bools give 0/1, as numpy's astype(uint8)


class ImagesSnapshot:
    """``log_images``'s arguments, checked and copied at the call; ``records()`` converts them later.

    :param images: ``[N, C, H, W]``/``[N, H, W, C]``, one 3-D image, one grey ``[H, W]`` image, or a
        list of 3-D images; any real dtype (pixel values as the module docstring says); numpy arrays
        or tensors on any device.
    :param channels_last: whether the channels are the last dimension.
    :param masks: name -> one ``[H, W]`` class-id mask per image (a ``[N, H, W]`` array or a list).
    :param mask_class_labels: class id -> label, for every mask.
    """

    def __init__(self, images: Any, *, channels_last: bool = False, masks: Mapping[str, Any] | None = None,
                 mask_class_labels: Mapping[int, str] | None = None):
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images: expected at least one image, got an empty sequence")
            batches = [(_expand(image, "images"), channels_last) for image in images]
        else:
            tensor = _as_tensor(images, "images")
            if tensor.ndim == 2:  # a single grey image [H, W]
                batches = [(tensor[:, :, None], True)]
            else:
                batches = [(tensor, channels_last)]
        sizes: list[tuple[int, int]] = []
        self.nbytes = 0  # of the uint8 pixels records() will make: the bus's budget counts them now
        for tensor, layout in batches:
            count, channels, height, width = _checked_layout(tensor, layout)
            sizes += [(height, width)] * count
            self.nbytes += count * channels * height * width
        if mask_class_labels is not None and not (isinstance(mask_class_labels, Mapping) and all(
                isinstance(k, numbers.Integral) and isinstance(v, str) for k, v in mask_class_labels.items())):
            raise TypeError("mask_class_labels: expected a mapping of int class id -> str label")
        if masks is not None and not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a mapping of mask name -> masks, got {type(masks).__name__}")
        mask_lists = {check_name(name, f"masks[{name!r}]"): _checked_masks(name, value, sizes)
                      for name, value in (masks or {}).items()}
        # The snapshot: private copies on the data's own device, queued on its current stream.
        self._batches = [(tensor.clone(), layout) for tensor, layout in batches]
        self._masks = {name: [mask.clone() for mask in masks_of_name] for name, masks_of_name in mask_lists.items()}
        self._labels = dict(mask_class_labels) if mask_class_labels is not None else None
        devices = {t.device for t, _ in self._batches} | {m.device for ms in self._masks.values() for m in ms}
        self._copied = [_recorded_event(device) for device in devices if device.type == "cuda"]

    def records(self) -> list[Image]:
        """The ``Image`` records (one per image). Call it off the training thread: it converts and
        copies to the host, waiting for the device where the data lives there."""
        from logbus.kernels import images_to_uint8

        for event in self._copied:
            event.synchronize()  # this thread waits for the snapshot copies, never the caller
        pixels = [image for tensor, layout in self._batches
                  for image in _host(images_to_uint8(_as_composer_pixels(tensor), channels_last=layout))]
        masks = {name: [_host(mask if _is_integer(mask) else mask.long()) for mask in masks_of_name]
                 for name, masks_of_name in self._masks.items()}
        return [Image(pixels=image, masks={name: Mask(masks_of_name[i], self._labels)
                                           for name, masks_of_name in masks.items()})
                for i, image in enumerate(pixels)]


def images_record(key: str, images: Any, step: int | None = None, *, use_table: bool = False,
                  channels_last: bool = False, masks: Mapping[str, Any] | None = None,
                  mask_class_labels: Mapping[int, str] | None = None) -> Deferred:
    """The record for one ``log_images`` call: an ``Images`` record under ``key`` (or, with
    ``use_table``, a one-column ``Table`` under ``key + " Table"``, as Composer's ``WandBLogger``).

    Everything is checked here, on the caller's thread; the images are converted when a backend's
    writer first needs them (see the module docstring)."""
    check_key(key, "key")
    _check_step(step)
    snapshot = ImagesSnapshot(images, channels_last=channels_last, masks=masks, mask_class_labels=mask_class_labels)
    if use_table:
        def build():
            return Table(key + " Table", [key], [[image] for image in snapshot.records()], step)

        return Deferred(Table, LazyFuture(build), nbytes=snapshot.nbytes)
    return Deferred(Images, LazyFuture(lambda: Images(key, snapshot.records(), step)), nbytes=snapshot.nbytes)


def _expand(image: Any, argument: str) -> torch.Tensor:
    tensor = _as_tensor(image, argument)
    if tensor.ndim != 3:
        raise ValueError(f"{argument}: each image in a sequence must be 3-D [C, H, W] or [H, W, C], "
                         f"got shape {tuple(tensor.shape)}")
    return tensor


def _checked_layout(tensor: torch.Tensor, channels_last: bool) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of an image batch, checked as ``images_to_uint8`` will, on a meta tensor (no
    data read, no sync)."""
    from logbus.kernels.images import _prepare

    if tensor.dtype.is_complex:
        raise TypeError(f"images: expected real pixel values, got dtype {tensor.dtype}")
    # Any real dtype is accepted (records() casts as Composer + wandb do): check the layout as float.
    view, _, _, _ = _prepare(torch.empty(tensor.shape, device="meta"), None, None, "auto", channels_last)
    if 0 in view.shape:
        raise ValueError(f"images: expected non-empty images, got shape {tuple(tensor.shape)}")
    return tuple(view.shape)


def _checked_masks(name: str, value: Any, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    argument = f"masks[{name!r}]"
    if isinstance(value, (list, tuple)):
        given = [_as_tensor(v, argument) for v in value]
        masks = given
    else:
        given = [_as_tensor(value, argument)]
        masks = given if given[0].ndim == 2 else list(given[0])  # views: no data is read
    masks = [mask.squeeze() if mask.ndim == 3 else mask for mask in masks]
    if len(masks) != len(sizes):
        raise ValueError(f"{argument}: expected {len(sizes)} masks (one per image), got {len(masks)}")
    for index, (mask, size) in enumerate(zip(masks, sizes)):
        if tuple(mask.shape) != size:
            raise ValueError(f"{argument}: expected shape {size} ([H, W] class ids matching image {index}), "
                             f"got {tuple(mask.shape)}")
    for tensor in given:
        if tensor.dtype.is_complex:
            raise TypeError(f"{argument}: expected integer class ids, got dtype {tensor.dtype}")
        # Host data is checked here at no cost; a CUDA mask is checked on the writer (reading it here
        # would wait for the GPU), where a negative id drops the images with a warning.
        if not tensor.is_cuda and tensor.dtype != torch.bool and tensor.numel() and bool(tensor.min() < 0):
            raise ValueError(f"{argument}: class ids must be >= 0, got minimum {tensor.min().item()}")
    return masks


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)


def _recorded_event(device: torch.device) -> "torch.cuda.Event":
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def _host(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array. From CUDA through pinned memory, waiting on an event on this
    thread (a plain ``.cpu()`` would be a synchronising pageable copy, which sync-debug mode flags)."""
    if not tensor.is_cuda:
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    _recorded_event(tensor.device).synchronize()
    return host.numpy()
