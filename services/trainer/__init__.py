"""trainer: retrains a scikit-learn pipeline on each new dataset version and exports it to ONNX."""
