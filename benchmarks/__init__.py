"""Speed and accuracy benchmarks (not part of the test run)."""
