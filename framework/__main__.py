"""``python -m framework`` does what the ``litzoo`` console script does."""

from framework.cli import main

if __name__ == "__main__":
    main()
