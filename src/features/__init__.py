"""Feature pipelines: pure functions of cleaned order lines and an analysis date (RFM summary,
scores and segments, behavioural features, retention KPIs). Filled by the feature issue."""
