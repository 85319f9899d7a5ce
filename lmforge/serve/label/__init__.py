"""The labeling page: `lmforge label` serves it, `app.create_app` builds it over a `LabelStore`."""
