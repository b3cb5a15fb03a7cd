"""Estimators: probabilistic CLV (BG/NBD, Gamma-Gamma), churn (LightGBM), basket rules and
recommendations. Filled by the model issues."""
