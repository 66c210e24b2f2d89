"""Learned scorers and feature extractors: their architectures and loaders (foundation layer).

Metrics, trainers and the offline build jobs (harness/build/) all read them; nothing here fits
a model from the outer loop or imports a layer above (tests/test_layers.py).

* ``backends/``: optical flow, frame interpolation, point tracking and feature backends, with
  the upstream architectures that load published weights (``backends/real/``) and the weight
  manifest (``backends/manifest/``).
* ``latent_rm.py``: the latent reward model (FCRM's judge); ``motion_rm.py`` with
  ``motion_features.py``: SHIFT's IMR/LMR discriminators; ``tiny_features.py``: the tiny
  world's feature extractors (consistency, FVD).
* ``errors.py``: ``RewardError``, shared by the scorers and the reward registry.
"""
