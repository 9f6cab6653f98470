"""Folder layouts of training data, one module per family: every supported layout becomes a list of records.

Cells (one cell per record, `CellRecord`: record.py), read by cells.read_records:
  sipakmed.py  SIPaKMeD as distributed: im_<Class>/im_<Class>/NNN.bmp cluster images with
               NNN_cytMM.dat / NNN_nucMM.dat polygons, and CROPPED/NNN_MM.bmp cells with
               NNN_MM_cyt.dat / NNN_MM_nuc.dat. Cells of one cluster image share a group.
  paired.py    paired: <class>/<n>.<ext> with masks <n>N.png (nucleus) and <n>C.png (cytoplasm), as Herlev;
               labels: <class>/*.png|jpg|bmp|tif without masks: classification only, masks come from stage 1.
  files.py     what they share: class folders, image files, .dat polygons, bad cells under --skip-bad.
  points.py    cric: field images with CRIC's classifications.csv (a point on each marked nucleus and its Bethesda
               class), read and checked; one cell per point, a square window around it, no masks (stage 1's).
  review.py    review: review.py --export-points' folder (tools/review/points.py writes it), the cells a reviewer accepted or
               relabelled; named with --layout review, never detected.
Fields of view (one field with every cell outlined per record): tools/fields/layouts.py, beside the field code
it feeds; its cric field layout reads points.py's points.

File names are matched without regard to case (10N.PNG is 10's nucleus mask). Folders are listed by
tools/inputs.py: each file once, and never hidden files and folders (.DS_Store, macOS ._* and __MACOSX/)
or what this project wrote. Everything after the readers uses only the records; decoding is
tools/data_loader.py's.
"""
