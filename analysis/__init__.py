"""Polars analysis of the Parquet results: critical rho, tables, plots, report. No Ray needed."""
