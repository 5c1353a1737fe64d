"""Experiments: the pure core (no I/O).

* :mod:`sartor.experiments.assignment` -- GrowthBook-compatible hashing, bucketing and the
  experiment run (targeting, coverage, namespaces, forcing, sticky bucketing);
* :mod:`sartor.experiments.conditions` -- GrowthBook targeting conditions;
* :mod:`sartor.experiments.stats` -- analysis over sufficient statistics (Welch, delta
  method, Bayesian, CUPED, sequential, SRM, multiple-comparison corrections, verdicts);
* :mod:`sartor.experiments.bandits` -- Thompson sampling and epsilon-greedy allocation.
"""
