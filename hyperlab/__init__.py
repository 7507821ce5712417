"""hyperlab: HyperNetwork research at scale.

Subpackages, by layer:
  models    HyperLSTM, static hyper-convnets, baselines, parameter reports (torch)
  data      character corpora and image datasets, download-and-verify
  training  the training core: ``fit(config, report)``; knows neither Ray nor MLflow
  search    search spaces and orchestration on Ray Tune + Optuna
  tracking  everything that talks to MLflow
  analysis  Pareto fronts, hypervolume, comparison (pandas/numpy; no torch, no Ray)
"""

__version__ = "0.1.0"
