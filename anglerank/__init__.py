"""anglerank: GAIN-RL angle-concentration scoring and curriculum tools."""

__version__ = "0.1.0"


def score(*args, **kwargs):
    """Score a Parquet dataset; see :func:`anglerank.scoring.run.run_score`."""
    from anglerank.scoring.run import run_score

    return run_score(*args, **kwargs)
