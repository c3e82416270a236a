"""The benchmarks: run each from the checkout's root as `python -m benchmarks.<name>`."""
