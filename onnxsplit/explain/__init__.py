"""`onnxsplit explain`: inputs, preprocessing, rendering of maps."""
