"""The job-folder queue: submit jobs, run workers (by hand or from cron), read status, prune old results.

- ``store``: the queue (``JobStore``), over ``database`` (schema, migrations), ``records`` (reading and adding
  jobs) and ``leases`` (the transitions a worker's lease fences); the workers' heartbeats.
- ``enqueue``, ``submit``: how a job enters the queue. ``cancel``, ``status``, ``prune``: what is asked of it.
- ``run``: ``JobRun``, one claimed job's lifecycle (lease, progress, settling), shared by the local worker and the
  Ray pool's driver (``restorecli.distributed``).
- ``worker``: the local worker loop, each job's images through one local batch.
"""
