"""The batch that the loader yields and the model, the loss and the evaluator consume."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """One mini-batch.  B = batch size, T = num_steps (n_v), L = longest query in the batch (<= n_q).

    video:      [B, T, D] float   downsampled features (Section 4.3)
    video_mask: [B, T]    bool    True on real steps (all True when features.shorter == repeat)
    words:      [B, L]    long    token ids (0 = <pad>)
    word_mask:  [B, L]    bool    True on real words
    gt:         [B, 2]    float   ground-truth (start, end) in seconds
    duration:   [B]       float   video duration in seconds; step i spans [i, i+1) * duration / T
    index:      [B]       long    row of each query in its split (for predictions)
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    words: torch.Tensor
    word_mask: torch.Tensor
    gt: torch.Tensor
    duration: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return int(self.words.shape[0])
