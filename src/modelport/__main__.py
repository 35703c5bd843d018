"""`python -m modelport` runs the `modelport` command."""

from modelport.cli import main

if __name__ == "__main__":
    main()
