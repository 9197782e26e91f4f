"""The compute engine and its machines: Dask cluster and TLS, GPU workers, Hetzner fleet, cloud-init."""
