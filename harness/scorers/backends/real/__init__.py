"""Backends with the upstream architectures, loading the upstream weight files from the local cache.

Importing this package registers each backend's random initialiser (``harness weights
init-random``) and its flow/interpolation registrations.
"""

from harness.scorers.backends.real import amt, cotracker, dreamsim, i3d, musiq, raft, sea_raft, videomae, vit  # noqa: F401  (registration side effects)
