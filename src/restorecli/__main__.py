"""``python -m restorecli``: the same command as ``restorecli``."""

from .cli.app import main

main()
