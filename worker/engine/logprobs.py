"""Log-probabilities from logits: of one sampled token, or of every prompt token of a block.

Both compute the log-softmax in float64 the same way (logits less their maximum, less the log
of the sum of their exponentials), so a prompt token's log-probability equals the one the same
token gets when it is generated at that position, up to the difference in the logits
themselves. A block is worked through a few rows at a time: a row is the whole vocabulary.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llamagrid.worker.engine.events import LogprobEntry, TokenLogprob
from llamagrid.worker.native.llama_backend import Model

#: Rows converted to float64 at once (32 rows of a 150k vocabulary: 38 MB).
_ROWS_AT_ONCE = 32


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The log-probabilities of one row of logits."""
    values = logits.astype(np.float64)
    shifted = values - values.max()
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum())
    return result


def token_logprob(
    model: Model, logits: npt.NDArray[np.float32], token: int, top: int
) -> TokenLogprob:
    """The log-probability of ``token`` and the ``top`` most likely tokens at one position."""
    logprobs = log_softmax(logits)
    top_ids = _top_ids(logprobs[np.newaxis, :], top)[0]
    return TokenLogprob(
        _entry(model, token, float(logprobs[token])),
        tuple(_entry(model, int(t), float(logprobs[t])) for t in top_ids),
    )


def first_prompt_entry(model: Model, token: int) -> TokenLogprob:
    """The entry of a prompt's first token, which has no log-probability: 0, no alternatives."""
    return TokenLogprob(_entry(model, token, 0.0), ())


def block_logprobs(
    model: Model, rows: npt.NDArray[np.float32], targets: list[int], top: int
) -> list[TokenLogprob]:
    """For each row of logits (one prompt position), the log-probability of the token that
    follows it (``targets``, one per row) and the ``top`` most likely tokens there."""
    assert rows.shape[0] == len(targets)
    out: list[TokenLogprob] = []
    for start in range(0, len(targets), _ROWS_AT_ONCE):
        block = rows[start : start + _ROWS_AT_ONCE].astype(np.float64)
        wanted = np.asarray(targets[start : start + _ROWS_AT_ONCE], dtype=np.int64)
        block -= block.max(axis=1, keepdims=True)
        block -= np.log(np.exp(block).sum(axis=1, keepdims=True))
        chosen = block[np.arange(len(wanted)), wanted]
        top_ids = _top_ids(block, top)
        for i, token in enumerate(wanted.tolist()):
            alternatives = tuple(
                _entry(model, int(t), float(block[i, t])) for t in top_ids[i].tolist()
            )
            out.append(TokenLogprob(_entry(model, token, float(chosen[i])), alternatives))
    return out


def _top_ids(logprobs: npt.NDArray[np.float64], top: int) -> npt.NDArray[np.int64]:
    """The ``top`` most likely token ids of each row, most likely first."""
    rows = logprobs.shape[0]
    if top <= 0:
        return np.zeros((rows, 0), dtype=np.int64)
    if top == 1:
        best: npt.NDArray[np.int64] = np.argmax(logprobs, axis=1).astype(np.int64)
        return best[:, np.newaxis]
    ids = np.argpartition(-logprobs, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(logprobs, ids, axis=1), axis=1, kind="stable")
    result: npt.NDArray[np.int64] = np.take_along_axis(ids, order, axis=1).astype(np.int64)
    return result


def _entry(model: Model, token: int, logprob: float) -> LogprobEntry:
    return LogprobEntry(token, model.piece(token), logprob)
