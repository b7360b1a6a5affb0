"""Speed and memory benchmarks of the recipe (see bench/README.md)."""
