"""Ray Tune layer: critical-rho grids, adaptive refinement, Optuna annealing search, Parquet sink."""
