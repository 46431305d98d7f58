"""Export: DeepImageJ SavedModel, ONNX, BioImage.IO rdf, validation across runtimes, prediction."""
