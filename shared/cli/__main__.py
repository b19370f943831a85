"""`python -m shared.cli`: the `cascade` command without the installed console script."""

from shared.cli.main import app

if __name__ == "__main__":
    app(prog_name="cascade")
