"""Synthetic YOOCHOOSE-format logs and small labelled lakes, for the demo, tests and benchmarks."""
