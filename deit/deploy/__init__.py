"""Using a trained model: preprocessing resolved from the file and the variant
(``preprocessing``), prediction and evaluation (``predict``), export to TorchScript / ONNX
(``export``), the ONNX Runtime predictor (``onnx_predict``) and int8 quantisation (``quantize``)."""
