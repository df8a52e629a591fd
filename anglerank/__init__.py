"""anglerank: GAIN-RL angle-concentration scoring and curriculum tools.

``anglerank.score``, ``anglerank.rank`` and ``anglerank.sample`` are the Python API
(:mod:`anglerank.api`); they import torch and the rest only when called, so
``import anglerank`` stays quick.
"""

from anglerank import errors  # noqa: F401  (anglerank.errors.UserError is what the API raises)

__version__ = "0.1.0"


def score(data, output=None, **options):
    """Score ``data`` (paths or an in-memory table); return the scores table. See :func:`anglerank.api.score`."""
    from anglerank.api import score as _score

    return _score(data, output, **options)


def rank(scores, data=None, output=None, **options):
    """Rank the scored rows; return them as a table. See :func:`anglerank.api.rank`."""
    from anglerank.api import rank as _rank

    return _rank(scores, data, output, **options)


def sample(scores, data=None, output=None, **options):
    """Draw an open-loop curriculum; return its rows as a table. See :func:`anglerank.api.sample`."""
    from anglerank.api import sample as _sample

    return _sample(scores, data, output, **options)
