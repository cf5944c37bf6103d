"""The attention of FIAN's refinement steps for a query, as the model computed it (issue 19 item 4).

FIAN refines each modality with the other twice per branch (eq. 9-10):

    branch qv:  step 1  Q1 = Enc(Q, V)    the words attend to the video steps   (query -> video)
                step 2  V1 = Enc(V, Q1)   the video steps attend to the words   (video -> query)
    branch vq:  step 1  V2 = Enc(V, Q)    the video steps attend to the words   (video -> query)
                step 2  Q2 = Enc(Q, V2)   the words attend to the video steps   (query -> video)

:func:`capture_attention` runs the model once with forward hooks on the attention module of each
encoder; a hook reads the inputs the encoder's attention received and asks that module for the
weights it applied (``weights()``: the softmax of eq. 4, CMA inside CGA, or the additive soft
attention), ``[B, heads, L_attending, L_attended]``.  The hooks exist only during the call: a
plain forward is untouched (same output, same kernels, no cost).  Rows are softmaxes over the
real positions of the attended sequence (padded ones get exactly 0); rows of padded attending
positions are computed but meaningless (:meth:`AttentionMap.real` cuts them off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# encoder attribute -> (branch, refinement step, attending -> attended, equation)
ENCODERS: dict[str, tuple[str, int, str, str]] = {
    "enc_a": ("qv", 1, "query -> video", "Q1 = Enc(Q, V), eq. 9"),
    "enc_b": ("qv", 2, "video -> query", "V1 = Enc(V, Q1), eq. 9"),
    "enc_c": ("vq", 1, "video -> query", "V2 = Enc(V, Q), eq. 10"),
    "enc_d": ("vq", 2, "query -> video", "Q2 = Enc(Q, V2), eq. 10"),
}


@dataclass(frozen=True)
class AttentionMap:
    """One encoder's attention: ``weights [B, heads, L_attending, L_attended]`` (float32, CPU)."""

    encoder: str
    branch: str
    step: int
    direction: str  # "query -> video" (rows: words, columns: video steps) or "video -> query"
    equation: str
    weights: torch.Tensor

    @property
    def query_rows(self) -> bool:
        """True when the rows are the words (query -> video), False when they are video steps."""
        return self.direction.startswith("query")

    def real(self, b: int, n_words: int, n_steps: int) -> torch.Tensor:
        """Sample ``b``'s map on its real positions, averaged over the heads: ``[n_words, n_steps]``
        (query -> video) or ``[n_steps, n_words]`` (video -> query)."""
        rows, cols = (n_words, n_steps) if self.query_rows else (n_steps, n_words)
        return self.weights[b, :, :rows, :cols].mean(0)


def capture_attention(
    model: Any, video: torch.Tensor, video_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
) -> tuple[Any, list[AttentionMap]]:
    """``(model output, [AttentionMap, ...])`` of one forward (no gradients), in the order of
    :data:`ENCODERS`; encoders a variant does not build (e.g. FIAN-VQ has only ``enc_c``) are absent."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str) -> Any:
        def record(module: Any, args: tuple[torch.Tensor, ...], _out: Any) -> None:
            q, kv, kv_mask = args
            seen[name] = module.weights(q, kv, kv_mask).detach().float().cpu()

        return record

    for name in ENCODERS:
        enc = getattr(model, name, None)
        if enc is not None:
            hooks.append(enc.attention.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            out = model(video, video_mask, words, word_mask)
    finally:
        for h in hooks:
            h.remove()
    maps = [AttentionMap(name, *ENCODERS[name], weights=seen[name]) for name in ENCODERS if name in seen]
    return out, maps


def query_attention(predictor: Any, query: str, video: Any) -> tuple[Any, list[AttentionMap], list[str]]:
    """The attention maps of ``query`` on an encoded video (:class:`fian.predict.EncodedVideo`) with
    a :class:`fian.predict.Predictor`: ``(model output, maps of sample 0, the words the model read)``.
    The words are the query's tokens as the vocabulary encodes them (``<unk>`` for unknown ones,
    cut at ``text.max_query_len``)."""
    ids = predictor.encode_query(query)
    dev = predictor.device
    words = torch.tensor([ids], dtype=torch.long, device=dev)
    word_mask = torch.ones_like(words, dtype=torch.bool)
    out, maps = capture_attention(predictor.model, video.features.to(dev)[None], video.mask.to(dev)[None], words, word_mask)
    return out, maps, [predictor.vocab.itos[i] for i in ids]
