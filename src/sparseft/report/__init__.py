"""Run reports: a report card per run (report.md + metrics.json) with environment header."""
