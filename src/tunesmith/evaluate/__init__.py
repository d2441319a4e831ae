"""Evaluation: target-task metrics, the broad suite, the forgetting/safety guard, and the report.

Modules, along the flow: `scoring` (log-likelihoods, greedy replies) -> `suite` (tasks and items) and
`metrics` (target-task text metrics) -> `guard` (base vs tuned, bootstrap intervals, verdict) -> `report`.
`runner` ties them together for `tunesmith eval`. Nothing heavy is imported here.
"""
