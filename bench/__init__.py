"""radlake benchmarks (``make bench``): each prints JSON and keeps its latest result in bench/results/."""
