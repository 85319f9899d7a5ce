"""The model as a service: a continuous-batching scheduler, an OpenAI-compatible HTTP API and pages (`lmforge
serve`), and the preference labeling page (`label/`, `lmforge label`)."""
