"""Fields of view and whole slides: everything that reads, trains on, segments and writes images of many cells.

    layouts.py           field data roots (ISBI 2014, SIPaKMeD cluster images) -> one record per field
    data.py              training: fields at the model's scale, their tiles and cell windows
    int8_calibration.py  typical inputs cut from the training fields, for the field models' int8 graphs
    geometry.py          how a field is cut into the models' inputs (shared by training and inference)
    readers.py           a field or a slide read by regions (OpenSlide, tifffile, whole images)
    tissue.py            where a slide holds tissue, so blocks of bare glass are skipped
    models.py            inference: the two field models, by ONNX Runtime (float32 or int8) or PyTorch
    segment.py           inference: every cell of a field, block by block, and its class
    predict.py           predict.py --fields: the run, its executor (in process, threads, Dask: cluster.py), its tables
    plan.py, slide.py    an input planned into blocks; the blocks screened, written in order, resumed, answered
    journal.py           each input's GeoJSON and CSV, appended block by block and resumable
    outputs.py, labels.py  what is written for a cell and a field; an input's label images
    summary.py, report.py  the slide's call and gallery; its HTML report
    make_slide.py        generated whole slides for tests and the demo
"""
