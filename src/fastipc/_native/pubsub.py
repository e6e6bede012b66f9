"""The fan-out on the native backend: the native handle types ``PublisherHandle`` and
``SubscriberHandle`` of ``fastipc._fastipc`` (``csrc/py/pubsub.c``, over the C core of
``csrc/pubsub.c``). The public classes of :mod:`fastipc.pubsub` subclass them there
(``_core.concrete``): each per-message operation is one C method, the mapping stays
Python's (the handle holds a buffer export of it until it is released), and nothing of
the object lives here."""

from __future__ import annotations

__all__: list[str] = []
