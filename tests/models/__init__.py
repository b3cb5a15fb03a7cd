"""Tests of crmkit.models."""
