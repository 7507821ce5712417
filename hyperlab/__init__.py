"""hyperlab: HyperNetwork research at scale.

Subpackages, by layer:
  models    HyperLSTM, static hyper-convnets, baselines, parameter reports (torch)
  data      character corpora and image datasets, download-and-verify
  training  the training core: ``fit(config, report)``; knows neither Ray nor MLflow
  search    search spaces and orchestration on Ray Tune + Optuna
  tracking  everything that talks to MLflow
  analysis  Pareto fronts, hypervolume, comparison (pandas/numpy; no torch, no Ray)

``hyperlab.load_model(run)`` and ``hyperlab.load_run(run)`` give a trained model from its MLflow run
(``hyperlab.loading``; imported on first use, so ``import hyperlab`` stays light).
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "load_run"]


def __getattr__(name: str):
    if name in ("load_model", "load_run"):
        from hyperlab import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'hyperlab' has no attribute {name!r}")
