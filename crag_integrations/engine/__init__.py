"""The process-wide shared cross-encoder engine.

One :class:`CrossEncoderEngine` per :class:`~crag_integrations.config.EngineConfig`, and one
loaded model per (model, revision, device, dtype, trust_remote_code, local-files policy,
cache directory): engines that differ only in windowing or batching settings share the
weights. Every loaded model has exactly one owner thread that holds the model and its fast
tokenizer (fast tokenizers are not safe to share across threads: "Already borrowed").
Callers, sync or async, submit requests to that owner's queue and wait on a future; the
owner drains every request waiting in the queue, tokenizes them, packs all their windows
into length-sorted, token-budgeted batches, runs the forward passes and hands each caller
its own results. Concurrent callers therefore share forward passes, and a pair another
caller is computing is waited for rather than computed twice.

Each pair succeeds or fails on its own: text the tokenizer cannot read (a lone surrogate)
is refused before tokenizing, a failing tokenizer call or forward pass is narrowed down to
the pairs that cause it, and only the calls that asked for those pairs raise (naming
``pairs[i]``). After ``os.fork()`` the child loads its own copy on first use.

Pipeline of one drain: pre-process (validate, tokenize, window) -> forward (pad, run) ->
post-process (regroup windows, merge token probabilities) -> deliver.

Modules, from the public face down:

- :mod:`~crag_integrations.engine.registry`: :func:`get_engine` / :func:`release_engines`.
- :mod:`~crag_integrations.engine.cross_encoder_engine`: :class:`CrossEncoderEngine`, the
  verbs, the score-cache lookup.
- :mod:`~crag_integrations.engine.cache`: the LRU score cache shared by a model's engines
  (bounded by entries and by estimated bytes) and the pairs in flight.
- :mod:`~crag_integrations.engine.runner`: the owner thread, its queue, the forward pass.
- :mod:`~crag_integrations.engine.batching`: a drain's pure steps (encode, pack, merge).
- :mod:`~crag_integrations.engine.windows`: pairs into overlapping windows (also used by
  training).
- :mod:`~crag_integrations.engine.requests`: the request and window records.
- :mod:`~crag_integrations.engine.loading`: load key, loading, load-time checks.
- :mod:`~crag_integrations.engine.devices`: device, dtype and attention-kernel choice.

Only modules of this package (besides the test-model builder and training) import torch or
transformers, and they import torch lazily: importing the engine loads neither.

Example:
    >>> from crag_integrations import get_engine
    >>> engine = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2")  # nothing loads yet
    >>> scores = engine.score_pairs([("what causes rain?", "Water vapour condenses.")])
    ... # doctest: +SKIP
"""

from crag_integrations.engine.cross_encoder_engine import CrossEncoderEngine
from crag_integrations.engine.registry import get_engine, release_engines

__all__ = ["CrossEncoderEngine", "get_engine", "release_engines"]
