"""``python -m gradfit``: the same command line as the ``gradfit`` script."""

from gradfit.cli import main

if __name__ == "__main__":
    main()
