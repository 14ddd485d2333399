"""MLflow: tracking store and runs, the pyfunc model, the registry and its champion gate."""
