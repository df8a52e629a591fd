"""Adapters that plug the GAIN-RL curriculum into other trainers (TRL, verl).

A user training with TRL's ``GRPOTrainer`` or verl's PPO trainer gets the
curriculum of :mod:`anglerank.curriculum` (the same settings, defaults and
definition of a correct completion as ``anglerank train``) from an
angle-ranked data set with no glue code:

- :mod:`anglerank.integrations.trl`: ``GainRLGRPOTrainer`` (a ``GRPOTrainer``
  subclass) and ``GainRLConfig``;
- :mod:`anglerank.integrations.verl`: ``GainRLSampler``, a curriculum sampler
  for verl's ``data.sampler.class_path`` / ``class_name``;
- :mod:`anglerank.integrations.columns`: reading the rank and angle columns
  from whatever data set the trainer holds.

Each adapter imports its trainer only when first used.
"""
