"""The Typer command-line interface: the only package that imports typer and rich.

Each command lives in its own module and defines `command(...)`; `app.py` registers them.
Commands import torch and the library lazily, inside the function, so `semgen --help` is instant.
"""
