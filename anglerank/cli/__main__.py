"""``python -m anglerank.cli``: the `anglerank` command."""

from anglerank.cli import main

if __name__ == "__main__":
    main()
