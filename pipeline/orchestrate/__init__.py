"""Orchestration: Ray Jobs submit (`submit`), nightly runs (`nightly`) and their pure plan (`nightly_plan`), cron/systemd schedules (`cron`), the demo (`demo`)."""
