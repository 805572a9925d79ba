"""``python -m asset_generator`` runs the command-line program."""

from asset_generator.cli import main

if __name__ == "__main__":
    main()
