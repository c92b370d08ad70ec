"""The Ray worker pool behind the job folder (``restorecli worker --ray``): ``driver`` claims jobs (each a
``jobs.run.JobRun``) and writes every file on the queue's machine; ``actor`` holds the loaded models anywhere in the
cluster and turns input bytes into output bytes; ``pool`` shapes the pool and tracks its actors; ``cluster`` joins
and leaves Ray. Importing this package imports neither Ray nor torch."""
