"""Benchmarks in, scores out: benchmark readers, the evaluation harness, reports and the MLLM judge."""
