"""`python -m cascade.cli`: the `cascade` command without the installed console script."""

from cascade.cli.main import app

if __name__ == "__main__":
    app(prog_name="cascade")
