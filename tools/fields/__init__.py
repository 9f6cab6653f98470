"""Fields of view and whole slides: everything that reads, trains on, segments and writes images of many cells.

    layouts.py   field data roots (ISBI 2014, SIPaKMeD cluster images) -> one record per field
    data.py      training: fields at the model's scale, their tiles and cell windows
    int8_calibration.py  typical inputs cut from the training fields, for the field models' int8 graphs
    geometry.py  how a field is cut into the models' inputs (shared by training and inference)
    models.py    inference: the two field models, by ONNX Runtime (float32 or int8) or PyTorch
    segment.py   inference: every cell of a field, block by block, and its class
    outputs.py   what predict.py --fields writes for a field
"""
