"""Serving: HTTP front ends over the pipeline's artifacts (the labeling page lives in `label/`)."""
