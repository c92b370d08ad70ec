"""Attacks on restorecli from the outside: each test starts what it attacks (or what attacks it) on 127.0.0.1."""
