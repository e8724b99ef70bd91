"""Integrations that other tools load by entry point (MLflow run context, pyfunc model) and the MLflow
glue the pipeline stages share. The core package ``ngsll`` never imports this package."""

# The key of an NGSLL pyfunc's MLmodel metadata: how the evaluator recognises NGSLL models.
NGSLL_METADATA_KEY = "ngsll"
