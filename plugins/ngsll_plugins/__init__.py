"""Integrations that other tools load by entry point (MLflow run context, pyfunc model) and the MLflow
glue the pipeline stages share. The core package ``ngsll`` never imports this package."""
