"""What an exported graph promises, shared by the exporter (tools/onnx_export.py, which needs torch) and the
runtime (tools/inference.py, which must not import it): a file of another format is exported again."""

# 1: fixed input sides; 2: the field model's tile side is free (dynamic spatial axes), so inference tiles can be
# larger than the training tiles (tools/fields/segment.py: INFERENCE_TILE_PX)
EXPORT_FORMAT = "2"
