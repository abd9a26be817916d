"""One sample stream per table key on a bus.

A stream logs ``{key_prefix}/{label}``. Two streams writing one key would log it at the same step,
and W&B keeps only the last table of a step (the local store keeps both, with nothing to tell them
apart). So the second stream is refused, with an error naming the key, as early as the clash is
known:

- a ``SampleLogger`` logs every evaluator of its Trainer: it claims its whole key prefix at
  ``Event.INIT`` (so ``Trainer(...)`` raises for a second ``SampleLogger`` with the same prefix);
- a plain loop's stream (``run.samples``) logs the labels it is given: it claims
  ``{key_prefix}/{label}`` at the first ``add`` or ``log`` of that label, which raises if another
  stream on the run holds that key (or the whole prefix).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

# bus -> its claims: a key prefix -> the stream holding all of it, or (prefix, label) -> the stream
# holding that one key. A bus that is gone takes its claims with it.
_claims: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _suggestion(pipeline: Any) -> str:
    name = getattr(pipeline.extractor, "name", None)
    return f"key_prefix='{pipeline.key_prefix}-{name if isinstance(name, str) and name else 2}'"


def claim_key_prefix(buses: Iterable[Any], pipeline: Any, stream: str) -> None:
    """Records that ``pipeline`` logs every ``{pipeline.key_prefix}/<label>`` on each of ``buses``;
    raises ``ValueError`` if another stream already logs under that prefix on one of them (the same
    pipeline again is fine: Composer may run ``Event.INIT`` twice).

    :param buses: the buses the stream emits its tables on.
    :param pipeline: the stream's ``SamplePipeline``.
    :param stream: what the stream is, for the error (``"SampleLogger"``).
    """
    buses = list(buses)
    prefix = pipeline.key_prefix
    for bus in buses:
        claims = _claims.get(bus, {})
        others = [owner for claim, owner in claims.items()
                  if owner is not pipeline and (claim == prefix or (isinstance(claim, tuple) and claim[0] == prefix))]
        if others:
            raise ValueError(
                f"key_prefix: {prefix!r} is already used by another sample stream on this run, and both would log "
                f"'{prefix}/<label>' at the same steps (W&B keeps only the last table of a step); give this {stream} "
                f"a key_prefix of its own, e.g. {_suggestion(pipeline)}")
    for bus in buses:
        _claims.setdefault(bus, {})[prefix] = pipeline


def claim_label(bus: Any, pipeline: Any, label: str) -> None:
    """Records that ``pipeline`` logs ``{pipeline.key_prefix}/{label}`` on ``bus``; raises
    ``ValueError`` if another stream already does (or logs the whole prefix).

    :param bus: the run's bus.
    :param pipeline: the stream's ``SamplePipeline``.
    :param label: the label being added or logged.
    """
    prefix = pipeline.key_prefix
    claims = _claims.setdefault(bus, {})
    owner = claims.get((prefix, label), claims.get(prefix))
    if owner is not None and owner is not pipeline:
        raise ValueError(
            f"label: {label!r} is already logged as '{prefix}/{label}' by another sample stream on this run (W&B "
            f"keeps only the last table of a step); give this stream a key_prefix of its own (e.g. "
            f"{_suggestion(pipeline)}) or use another label")
    claims[(prefix, label)] = pipeline
