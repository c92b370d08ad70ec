"""``restorecli serve``: the REST API and the browser dashboard over the job folder.

``config`` (what the server is told, from flags, the environment and ``.env``), ``uploads`` (multipart bodies
streamed into a staged job), ``views`` (the API's documents, read from the queue), ``supervise`` (the worker
processes and the janitor), ``app`` (the FastAPI application: the only module importing FastAPI), ``dashboard/``
(the page, served as files), and ``client`` (the other end: ``restore --server``). Importing this package imports
nothing; FastAPI is imported only by ``app``, which only ``serve`` loads.
"""
