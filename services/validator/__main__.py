from services.validator.app import build
from shared.service import run_main

if __name__ == "__main__":
    run_main("validator", build)
