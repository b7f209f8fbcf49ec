"""FFCV shard reading, and the field layout both sides share (writing: beton_writer.py).

Reading: `train_loader`, `val_loader` and `uint8_batches` chain one FFCV `Loader` per shard. The pipelines
follow the ffcv-imagenet recipe with the CPU order from DESIGN.md: `NormalizeImage` directly after the
decoder and before `ToTensor` (the GPU order makes the Loader constructor spin on CPU, libffcv/ffcv#350).

Every per-shard Loader reuses the numba code the first one compiled (`_share_compiled_pipelines`): without
that, each shard costs seconds of JIT compilation per process.

Yielded tensors live in FFCV's reused batch buffers: consume (or copy) a batch before asking for the next
few. `uint8_batches` copies for you.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionnode.components.common.artifacts import IMAGENET_MEAN, IMAGENET_STD
from visionnode.components.common.cpus import keep_torch_threads
from visionnode.components.common.errors import DataError

IMAGE_FIELD = "image"
LABEL_FIELD = "label"
CENTER_CROP_RATIO = 224 / 256          # resize-256 / crop-224, as the torchvision reference evaluates


def beton_length(path: str | os.PathLike[str]) -> int:
    """Number of samples in a `.beton`, read from its header (raises DataError if it is not one)."""
    from ffcv.types import CURRENT_VERSION, HeaderType

    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path} does not exist", "re-run `visionnode shard` or fetch the shards again")
    header = np.fromfile(path, dtype=HeaderType, count=1)
    if len(header) != 1 or int(header[0]["version"]) != CURRENT_VERSION:
        raise DataError(f"{path} is not an FFCV .beton file", "re-create it with `visionnode shard`")
    return int(header[0]["num_samples"])


# ----------------------------------------------------------------------------------------------- pipelines
# One source of truth for what the model sees: every reader below is built from these three functions.

def normalize_op() -> Any:
    from ffcv.transforms import NormalizeImage

    return NormalizeImage(np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255, np.float32)


def flip_normalize_op() -> Any:
    """Random horizontal flip (p = 0.5) and normalisation to float32 in one pass over each image.

    Written here because FFCV's RandomHorizontalFlip copies every image once more on its own (flipped or
    not) and, on the CPU, must come after NormalizeImage (see DESIGN.md), so it moved 4-byte floats: the two
    stock operations ran at 1,374 img/s, decode + crop alone at 3,771 (benchmarks/bench_ffcv_loader.py).
    """
    from dataclasses import replace

    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class FlipNormalize(Operation):
        def generate_code(self) -> Any:
            table = normalize_op().lookup_table  # [256, 3]: uint8 value -> normalised float32 per channel
            my_range = Compiler.get_iterator()

            def flip_normalize(images, result, indices):
                flips = np.random.rand(len(indices)) < 0.5
                height, width = images.shape[1], images.shape[2]
                for i in my_range(len(indices)):
                    for y in range(height):
                        for x in range(width):
                            source = width - 1 - x if flips[i] else x
                            result[i, y, x, 0] = table[images[i, y, source, 0], 0]
                            result[i, y, x, 1] = table[images[i, y, source, 1], 1]
                            result[i, y, x, 2] = table[images[i, y, source, 2], 2]
                return result

            flip_normalize.is_parallel = True
            flip_normalize.with_indices = True
            return flip_normalize

        def declare_state_and_memory(self, previous_state: Any) -> tuple[Any, Any]:
            return (replace(previous_state, jit_mode=True, dtype=np.dtype(np.float32)),
                    AllocationQuery(previous_state.shape, np.dtype(np.float32), previous_state.device))

    return FlipNormalize()


def _label_pipeline(as_tensor: bool) -> list[Any]:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Squeeze, ToTensor

    return [IntDecoder(), ToTensor(), Squeeze()] if as_tensor else [IntDecoder()]


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation strength; the defaults are the ImageNet recipe's."""

    min_scale: float = 0.08  # RandomResizedCrop keeps 8 %..100 % of the image area
    flip: bool = True        # random horizontal flip (p = 0.5)


def train_pipelines(resolution: int,
                    augmentation: Augmentation = Augmentation()) -> tuple[Any, dict[str, list[Any]]]:
    """Random-resized crop (+ horizontal flip), normalised float32 NCHW: (decoder, pipelines)."""
    from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
    from ffcv.transforms import ToTensor, ToTorchImage

    decoder = RandomResizedCropRGBImageDecoder((resolution, resolution), scale=(augmentation.min_scale, 1.0))
    image = [decoder, flip_normalize_op() if augmentation.flip else normalize_op(), ToTensor(),
             ToTorchImage()]
    return decoder, {IMAGE_FIELD: image, LABEL_FIELD: _label_pipeline(as_tensor=True)}


def val_pipelines(resolution: int) -> tuple[Any, dict[str, list[Any]]]:
    """Centre crop (224/256 of the short side) resized to `resolution`, normalised float32 NCHW."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.transforms import ToTensor, ToTorchImage

    decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=CENTER_CROP_RATIO)
    image = [decoder, normalize_op(), ToTensor(), ToTorchImage()]
    return decoder, {IMAGE_FIELD: image, LABEL_FIELD: _label_pipeline(as_tensor=True)}


def uint8_pipelines(resolution: int) -> tuple[Any, dict[str, list[Any]]]:
    """Centre crop as `val_pipelines`, but raw uint8 NHWC numpy: what the served model takes."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder

    decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=CENTER_CROP_RATIO)
    return decoder, {IMAGE_FIELD: [decoder], LABEL_FIELD: _label_pipeline(as_tensor=False)}


# ----------------------------------------------------------------------------------------------- reading

_COMPILE_CACHE: dict[tuple, Any] = {}
_STRUCTURAL_KEY: dict[int, tuple] = {}   # id(compiled function) -> the key it was compiled under
_KEEP_ALIVE: list[Any] = []              # so that ids in _STRUCTURAL_KEY are never reused


def _share_compiled_pipelines() -> None:
    """Let every per-shard Loader reuse the numba code the first one compiled.

    FFCV compiles each Loader's pipeline afresh (seconds per shard on 2 cores) although the functions are
    the same: same code object, same closure values. Operation closures are memoised on exactly that
    (code, closure values, signature, parallel), which is semantics-preserving. Leaf functions without a
    closure (imdecode, resize_crop, the memory reader) stay per Loader as FFCV makes them: numba's dispatcher
    of such a callee cannot be shared safely (type-inferring a new caller against a reused one raised
    KeyError inside numba), and a closure refers to them by their key, not their identity.
    """
    from ffcv.pipeline.compiler import Compiler

    if getattr(Compiler, "_visionnode_shared", False):
        return
    original = Compiler.compile.__func__

    def compile(cls: Any, code: Any, signature: Any = None) -> Any:
        parallel = bool(getattr(code, "is_parallel", False) and cls.num_threads > 1)
        key = _closure_key(code, signature, parallel, cls.is_enabled)
        if key is None or not getattr(code, "__closure__", None):
            compiled = original(cls, code, signature)
        elif key in _COMPILE_CACHE:
            return _COMPILE_CACHE[key]
        else:
            compiled = _COMPILE_CACHE[key] = original(cls, code, signature)
        if key is not None:
            _STRUCTURAL_KEY[id(compiled)] = key
            _KEEP_ALIVE.append(compiled)
        return compiled

    Compiler.compile = classmethod(compile)
    Compiler._visionnode_shared = True


def _closure_key(code: Any, signature: Any, parallel: bool, enabled: bool) -> tuple | None:
    func_code = getattr(code, "__code__", None)
    if func_code is None:
        return None
    cells = []
    for cell in code.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, np.ndarray):
            cells.append(("array", value.dtype.str, value.shape, value.tobytes()))
        elif isinstance(value, (int, float, str, bool, type(None), np.generic)):
            cells.append(("value", type(value).__name__, value))
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            cells.append(("tuple", value))
        elif id(value) in _STRUCTURAL_KEY:
            cells.append(("compiled", _STRUCTURAL_KEY[id(value)]))
        elif callable(value):
            cells.append(("object", id(value)))  # builtins such as range/prange: the same object every time
        else:
            return None
    try:
        hash(signature)
    except TypeError:
        return None
    # the cached dispatcher keeps `code` (and so its code object and globals) alive: their ids stay unique
    return (id(func_code), id(code.__globals__), tuple(cells), signature, parallel, enabled)


class ShardLoader:
    """One FFCV Loader per shard, chained; `len()` is the number of batches in one epoch.

    Train order: the shard order is reshuffled every epoch (seeded) and each shard's Loader shuffles within
    the shard (shards are written from a shuffled file list, so each holds a mix of classes).
    A shard's Loader lives while its shard is read and is dropped after: FFCV memory-maps the whole .beton
    and never unmaps it, so Loaders kept for every shard held the dataset's shard bytes resident (peak RSS
    grew with the data: 1.36 GB at 1 k images, 1.59 GB at 10 k in benchmarks/bench_scale.py). A Loader is
    rebuilt each epoch instead (~0.1 s a shard); its order derives from (seed, epoch), so nothing changes.
    With `distributed=True` every rank gets its part of each shard (FFCV's DistributedSampler ordering).
    """

    def __init__(self, shard_paths: Sequence[str | os.PathLike[str]], batch_size: int, resolution: int,
                 workers: int, *, train: bool, distributed: bool = False, seed: int = 0,
                 augmentation: Augmentation = Augmentation()) -> None:
        if not shard_paths:
            raise DataError("no shards given", "pass the .beton files written by `visionnode shard`")
        if batch_size < 1 or resolution < 8:
            raise DataError(f"batch size {batch_size} / resolution {resolution} px cannot work",
                            "use batch size >= 1 and resolution >= 8")
        self.paths = [Path(p) for p in shard_paths]
        self.counts = [beton_length(p) for p in self.paths]
        self.batch_size = batch_size
        self.resolution = resolution
        self.workers = max(1, workers)
        self.train = train
        self.distributed = distributed
        self.seed = seed
        self.augmentation = augmentation
        self.epoch = 0
        self._decoder: Any = None  # the open shard's decoder, resized by set_resolution
        self._world = _world_size() if distributed else 1

    def __len__(self) -> int:
        total = 0
        for count in self.counts:
            per_rank = -(-count // self._world)  # DistributedSampler pads to equal parts
            total += per_rank // self.batch_size if self.train else -(-per_rank // self.batch_size)
        return total

    def set_resolution(self, resolution: int) -> None:
        """Progressive resizing: change the decoders' output size (ffcv-imagenet's way); takes effect at
        the next shard started. FFCV re-allocates its buffers every epoch, so no recompilation is needed."""
        self.resolution = int(resolution)
        if self._decoder is not None:
            self._decoder.output_size = (self.resolution, self.resolution)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for _, batches in self.iter_shards():
            yield from batches

    def set_epoch(self, epoch: int) -> None:
        """Pin the next epoch's number: shard order and every shard's sample order derive from (seed, epoch),
        so a resumed run replays exactly the order it was interrupted in."""
        self.epoch = int(epoch)

    def iter_shards(self) -> Iterator[tuple[Path, Iterator[tuple[Any, Any]]]]:
        """One epoch as (shard path, that shard's batches) in this epoch's shard order.

        A shard's Loader is built when its first batch is asked for and unmapped when its batches are
        exhausted or dropped, before the next shard opens: only the batches generator refers to it.
        """
        epoch = self.epoch
        self.epoch += 1
        order = list(range(len(self.paths)))
        if self.train:
            order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))]
        for index in order:
            yield self.paths[index], self._shard_batches(index, epoch)

    def _shard_batches(self, index: int, epoch: int) -> Iterator[tuple[Any, Any]]:
        loader = self._open(index)
        loader.next_epoch = epoch
        batches = iter(loader)  # FFCV's __iter__ sets torch's threads to its decoder count ...
        keep_torch_threads()    # ... the model computes on every usable CPU instead
        try:
            yield from batches
        finally:
            # FFCV's reader thread holds the memory map until it has ended, and its Loader sits in reference
            # cycles: end the one, collect the other
            _end_reader_thread(batches)
            del batches, loader
            self._decoder = None
            gc.collect()

    def _open(self, index: int) -> Any:
        from ffcv.loader import Loader, OrderOption

        _share_compiled_pipelines()
        if self.train:
            decoder, pipelines = train_pipelines(self.resolution, self.augmentation)
        else:
            decoder, pipelines = val_pipelines(self.resolution)
        decoder.output_size = (self.resolution, self.resolution)
        self._decoder = decoder
        return Loader(
            os.fspath(self.paths[index]), batch_size=self.batch_size, num_workers=self.workers,
            order=OrderOption.RANDOM if self.train else OrderOption.SEQUENTIAL,
            drop_last=self.train, distributed=self.distributed, seed=self.seed + index,
            pipelines=pipelines, os_cache=True)


def _end_reader_thread(epoch_iterator: Any) -> None:
    """Stop FFCV's EpochIterator thread and wait for it. Its last act is a blocking `put(None)` on its
    batch queue, which never returns when the consumer stopped early with the queue full (overfitting one
    batch, max_steps): take what is queued until the thread has ended."""
    epoch_iterator.close()
    if epoch_iterator is threading.current_thread():  # a garbage collection that ran on the thread itself
        return
    while epoch_iterator.is_alive():
        try:
            while True:
                epoch_iterator.output_queue.get_nowait()
        except queue.Empty:
            pass
        epoch_iterator.join(timeout=0.05)


def train_loader(shard_paths: Sequence[str | os.PathLike[str]], batch_size: int, resolution: int,
                 workers: int, distributed: bool = False, seed: int = 0,
                 augmentation: Augmentation = Augmentation()) -> ShardLoader:
    """Training batches: (float32 NCHW normalised tensor, int64 labels); random-resized crop (+ flip)."""
    return ShardLoader(shard_paths, batch_size, resolution, workers, train=True, distributed=distributed,
                       seed=seed, augmentation=augmentation)


def val_loader(shard_paths: Sequence[str | os.PathLike[str]], batch_size: int, resolution: int, workers: int,
               distributed: bool = False) -> ShardLoader:
    """Evaluation batches: (float32 NCHW normalised tensor, int64 labels); centre crop 224/256, in order."""
    return ShardLoader(shard_paths, batch_size, resolution, workers, train=False, distributed=distributed)


def uint8_batches(shard_paths: Sequence[str | os.PathLike[str]], batch_size: int, resolution: int,
                  limit: int | None = None,
                  workers: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 NHWC [N, S, S, 3] RGB, int64 [N] labels) in shard order, centre crop; at most `limit` images.

    Arrays are copies, safe to keep (calibration sets, evaluation, benchmark request pools).
    """
    from ffcv.loader import Loader, OrderOption

    _share_compiled_pipelines()
    workers = workers or min(4, os.cpu_count() or 1)
    remaining = limit if limit is not None else sum(beton_length(p) for p in shard_paths)
    for path in shard_paths:
        if remaining <= 0:
            return
        _, pipelines = uint8_pipelines(resolution)
        loader = Loader(os.fspath(path), batch_size=batch_size, num_workers=workers,
                        order=OrderOption.SEQUENTIAL, drop_last=False, pipelines=pipelines, os_cache=True)
        for images, labels in loader:
            take = min(len(images), remaining)
            yield np.array(images[:take], dtype=np.uint8), np.array(labels[:take], dtype=np.int64).reshape(-1)
            remaining -= take
            if remaining <= 0:
                return


def _world_size() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise DataError("distributed=True needs an initialised torch.distributed process group",
                        "call torch.distributed.init_process_group (gloo works on CPU) first")
    return dist.get_world_size()
