"""`vosd eval` and `vosd score`: dataset layouts, evaluation runner, J&F metrics."""
