"""``python -m litzoo`` does what the ``litzoo`` console script does."""

from litzoo.cli import main

if __name__ == "__main__":
    main()
