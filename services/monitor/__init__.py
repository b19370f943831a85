"""monitor: compares the inputs serving sees with the data the champion was trained on."""
