"""`python -m music`: the `music` command (how `music up --full` starts its services)."""

from music.cli import main

main()
