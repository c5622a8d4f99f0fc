"""Detection models: backbones, the torchvision FCOS detector, level assignment and the MLflow pyfunc.

Coordinates are pixels of the source frame unless a name says otherwise; boxes are
``xyxy`` (x = column, y = row, origin at the top-left corner of the image).
"""
