"""Orchestration of the stages (validate, train, score), driven by the YAML in ``pipelines/``."""
