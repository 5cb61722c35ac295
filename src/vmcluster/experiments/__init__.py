"""The harness that reproduces the literature, beside the product: the CloudSim-replica
interval engine, PlanetLab trace loading, sweeps (process pool, Dask) and CloudSim's
published figures. The product never imports it; it runs the product's policies."""
