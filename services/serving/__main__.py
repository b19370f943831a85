from cascade.services.serving.workers import main

if __name__ == "__main__":
    main()
