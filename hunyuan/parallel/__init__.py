"""Several processes on one video: sequence parallelism (Ulysses) and CFG parallelism for the DiT."""
