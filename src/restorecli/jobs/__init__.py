"""The job-folder queue: submit jobs, run workers (by hand or from cron), read status, prune old results."""
