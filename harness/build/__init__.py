"""Offline jobs that fit or build the shipped assets (orchestration layer): the tiny base model
(``base.py``, `harness build base`), the few-step generator (``fewstep.py``), the tiny feature
extractors (``features.py``), the latent reward model (``latent_rm.py``) and SHIFT's motion
discriminators (``motion_rm.py``). What they build is read through harness/scorers/ and
harness/models/; the CLI calls them."""
