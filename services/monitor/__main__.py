from cascade.service import run_main
from cascade.services.monitor.app import build

if __name__ == "__main__":
    run_main("monitor", build)
