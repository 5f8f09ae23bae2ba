"""Batching clips: a resumable (distributed) training sampler, the evaluation sampler, the collate
function, worker seeding.

The order of samples is a function of ``(seed, epoch)`` only, and every sample's randomness is a
function of ``(seed, epoch, index)`` (:mod:`datasets.sampling`), so the batches of iteration
``k`` of epoch ``e`` can be reproduced after a restart by skipping ``k`` batches
(:meth:`ResumableSampler.set_epoch`).
"""
from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from util.nested_tensor import NestedTensor, TRAIN_SIZE_DIVISIBILITY, nested_tensor_from_videos_list


class ResumableSampler(Sampler[int]):
    """Shuffled indices of one rank, like ``DistributedSampler`` (permutation seeded by
    ``seed + epoch``, padded by repetition to a multiple of the world size, every
    ``num_replicas``-th index from ``rank``), that can start part-way through an epoch.

    With ``num_replicas == 1`` it replaces the original's single-process ``RandomSampler``
    (whose order came from the global torch generator) by a seeded one.
    """

    def __init__(self, dataset_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.num_samples = math.ceil(dataset_size / num_replicas)  # per rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from this rank's ``start``-th index (0 = the whole epoch)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside [0, {self.num_samples}]")
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """All of this rank's indices of the current epoch (ignoring ``start``)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.num_samples * self.num_replicas
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate_clips(batch: Sequence[tuple[Tensor, dict | list[dict]]]) -> tuple[NestedTensor, list[dict]]:
    """Clips ``[T, 3, H, W]`` → a NestedTensor ``[B, T, 3, Hp, Wp]`` padded to multiples of 32, and the targets.

    An item whose target is a list (a clip shared by several expressions, ``--expressions_per_clip``)
    contributes all its targets, in order, each marked with the ``clip_index`` of its clip in the batch.
    """
    clips, targets = zip(*batch)
    if any(isinstance(target, list) for target in targets):
        targets = [{**target, "clip_index": index}
                   for index, clip_targets in enumerate(targets) for target in clip_targets]
    return nested_tensor_from_videos_list(clips, TRAIN_SIZE_DIVISIBILITY), list(targets)


def seed_worker(worker_id: int) -> None:
    """Seed python ``random`` and NumPy in a loader worker from its torch seed (set by the loader's
    generator), for any library code that uses them; the datasets use per-sample generators."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Loader of whole batches (``drop_last``) over this rank's share of ``dataset``.

    Its ``batch_sampler.sampler`` is a :class:`ResumableSampler`; call
    :func:`set_loader_epoch` before iterating an epoch.
    """
    sampler = ResumableSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),
        collate_fn=collate_clips,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        # A private generator: creating an iterator must not consume the global torch RNG, whose
        # state is checkpointed for exact resumption.
        generator=torch.Generator(),
        pin_memory=pin_memory,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_iteration: int = 0) -> None:
    """Prepare ``loader`` for ``epoch``, skipping its first ``start_iteration`` batches."""
    batch_sampler = loader.batch_sampler
    sampler = batch_sampler.sampler
    sampler.set_epoch(epoch, start_iteration * batch_sampler.batch_size)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    # worker seeds depend on (seed, rank, epoch) only, not on how many iterators were created before
    loader.generator.manual_seed(int(np.random.SeedSequence([sampler.seed, sampler.rank, epoch]).generate_state(1)[0]))


class ShardSampler(Sampler[int]):
    """Every ``num_replicas``-th index from ``rank``, in order: each sample is evaluated by exactly one
    process (the original's padded distributed sampler repeated some, duplicating their predictions)."""

    def __init__(self, dataset_size: int, *, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, dataset_size, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    """Loader over this rank's share of an evaluation ``dataset``, in order, the last batch possibly short;
    clips are padded to multiples of 32 as in training (the original's evaluation loaders)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), num_replicas=world_size, rank=rank),
        collate_fn=collate_clips,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        pin_memory=pin_memory,
    )
