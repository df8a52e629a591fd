"""From scores to training data: rank, sample and inspect a score directory.

- :mod:`.scores`: what the three commands share (one layer's scores read back, the
  scored data checked against the manifest, the rank table);
- :mod:`.rank`: the input rows sorted by angle rank, ``angle_*`` columns added;
- :mod:`.sample`: an open-loop curriculum, one Parquet file per epoch;
- :mod:`.inspect`: summary statistics of a score directory.

The Parquet they write is built by :mod:`anglerank.data.parquet_out`. Import the
functions from their modules (``from anglerank.curation.rank import rank``): the
package does not re-export them, so ``anglerank.curation.rank`` stays the module.
"""
