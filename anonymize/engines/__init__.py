"""Engines run the same stages (:mod:`anonymize.stages`) in different places.

- ``local`` (default, no extra dependency): threads and bounded queues on this machine.
- ``ray`` (``pip install anonymize[ray]``): a Ray Data pipeline on a local Ray or a cluster.

Neither knows what a method does; both feed the same :class:`~anonymize.stages.Record` stage,
so records, summary, resume and exit codes are the same whichever engine ran.
"""
from __future__ import annotations

ENGINES = ("local", "ray")

__all__ = ["ENGINES"]
