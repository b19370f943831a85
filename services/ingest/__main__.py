from cascade.service import run_main
from cascade.services.ingest.app import build

if __name__ == "__main__":
    run_main("ingest", build)
