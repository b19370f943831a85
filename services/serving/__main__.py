from services.serving.app import build
from shared.service import run_main

if __name__ == "__main__":
    run_main("serving", build)
