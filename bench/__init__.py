"""Benchmarks that print one JSON object on their last line of output."""
