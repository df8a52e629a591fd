"""The curriculum: which prompts each epoch trains on, in one place.

- :mod:`.config`: :class:`CurriculumConfig`, the ONE set of defaults and the
  one definition of a correct completion;
- :mod:`.units`: rank units (ranks, or fractions of N);
- :mod:`.rankings`: the order the window walks (angle, random, length, a column);
- :mod:`.registry`: the sampler protocol and samplers by name; the built-in
  samplers are one file each in :mod:`.samplers` (gainrl, uniform, ordered,
  sweep);
- :mod:`.epoch`: :class:`Curriculum`, the epoch state machine that
  ``anglerank train``, the TRL trainer, the verl sampler and ``anglerank
  sample`` drive.
"""

from anglerank.curriculum.config import DEFAULTS, HELP, RANK_FIELDS, CurriculumConfig, CurriculumSettings, correct
from anglerank.curriculum.epoch import Curriculum, rank_order
from anglerank.curriculum.rankings import Ranking
from anglerank.curriculum.registry import make_sampler, register, sampler_class, sampler_names
from anglerank.curriculum.samplers.sweep import draw_schedule, open_loop_schedule, sweep_sampler
from anglerank.curriculum.units import CurriculumWarning, epoch_size, parse_rank_value, resolve_rank_units

__all__ = ["DEFAULTS", "HELP", "RANK_FIELDS", "CurriculumConfig", "CurriculumSettings", "Curriculum",
           "CurriculumWarning", "correct", "epoch_size", "make_sampler",
           "draw_schedule", "open_loop_schedule", "parse_rank_value", "rank_order", "Ranking", "register",
           "resolve_rank_units", "sampler_class", "sampler_names", "sweep_sampler"]
