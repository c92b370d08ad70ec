"""The Ray worker pool behind the job folder (``restorecli worker --ray``): ``driver`` claims jobs and writes
every file on the queue's machine; ``actor`` holds the loaded models anywhere in the cluster and turns input bytes
into output bytes. Importing this package imports neither Ray nor torch."""
