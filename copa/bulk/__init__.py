"""Patching a fleet: Copacetic's bulk PatchConfig, run locally or on a Dask cluster."""
